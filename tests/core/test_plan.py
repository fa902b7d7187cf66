"""`automodel plan`: the fake-tensor estimate against the same accounting on a real CPU run.

The measured side (automodel.estimate.measure) builds the real Trainer of the same config (real weights,
real data from the mock dataset: full rows of seq_len tokens) and runs two optimizer steps under the
same memory tracker (torch's MemTracker: every tensor storage alive, by category, at the highest
point). The estimate builds nothing real: meta model, fake tensors, synthetic batch.
"""

from __future__ import annotations

import json

import yaml
from automodel import config as config_mod
from automodel.cli import main
from automodel.plugins import load_plugins
from plan_helpers import quickstart_mock

VARIANTS = {
    "full": {},
    "lora": {"transforms": [{"name": "lora", "allow_random_base": True}]},
    # chunk_size 8 over a 48-token vocabulary: 6 chunks, of which the plan simulates 3 (automodel.plan.plan_pass)
    "activation_checkpointing+chunked_ce": {"transforms": [{"name": "activation_checkpointing"}],
                                            "loss": {"name": "chunked_ce", "chunk_size": 8}},
}


def test_plan_matches_a_real_cpu_step(tmp_path, monkeypatch):
    """Within 10% of the measured peak for every variant (today: within 0.1%), with the same breakdown."""
    from automodel.estimate import estimate, measure

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plugins = load_plugins()
    rows = []
    for name, extra in VARIANTS.items():
        path = quickstart_mock(tmp_path / name, **extra)
        v = config_mod.validate(config_mod.load(str(path), []), plugins, world_size=1)
        est = estimate(v.config, plugins, v.layout)
        real = measure(v.config, plugins, v.layout)
        rows.append((name, est.peak_bytes, real["peak_bytes"]))
        assert abs(est.peak_bytes / real["peak_bytes"] - 1) < 0.10, (name, est.breakdown, real)
        for key in ("parameters", "gradients", "optimizer"):
            assert abs(est.breakdown[key] - real["breakdown"][key]) <= 0.10 * max(real["breakdown"][key], 1), (name, key)
    print("\n".join(f"{n:28} plan {e / 2**20:8.2f} MiB  measured {m / 2**20:8.2f} MiB  {e / m:.4f}" for n, e, m in rows))
    peaks = {n: e for n, e, _ in rows}
    # the transforms change what they should: LoRA drops gradients/optimizer state, AC drops activations
    assert peaks["lora"] < peaks["full"] and peaks["activation_checkpointing+chunked_ce"] < 0.6 * peaks["full"]


def run_cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_cli_text_json_and_device(tmp_path, capsys):
    path = quickstart_mock(tmp_path)
    code, out, _ = run_cli(["plan", str(path)], capsys)
    assert code == 0
    assert "peak memory per rank" in out and "optimizer state" in out and "GFLOP" in out
    code, out, _ = run_cli(["plan", str(path), "--json", "--device", "H100-80GB"], capsys)
    data = json.loads(out)  # stdout is the JSON alone (components' progress lines go to stderr)
    assert data["fits"] is True and data["step_seconds"] > 0 and data["device"] == "H100-80GB"
    assert set(data["breakdown"]) == {"parameters", "gradients", "optimizer", "activations", "logits", "temporaries", "other"}
    assert sum(data["breakdown"].values()) == data["peak_bytes"]
    # a device too small: exit 3 with the advice
    code, out, _ = run_cli(["plan", str(path), "--memory-gb", "0.02", "plan.reserve_gb=0"], capsys)
    assert code == 3 and "DOES NOT FIT" in out and "activation checkpointing" in out and "local_batch_size=4" in out


def test_plan_refuses_hub_ids_without_a_model_config(tmp_path, capsys):
    path = quickstart_mock(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = {"name": "hf", "pretrained": "meta-llama/Llama-3.2-1B"}
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "plan.model_config" in err and "Traceback" not in err


def test_run_refuses_a_plan_that_does_not_fit(tmp_path, capsys):
    path = quickstart_mock(tmp_path)
    code, _, err = run_cli(["run", str(path), "plan.memory_gb=0.02", "plan.reserve_gb=0"], capsys)
    assert code == 2 and "does not fit the device's memory" in err and "DOES NOT FIT" in err
    assert "activation checkpointing" in err and "--no-plan-check" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing launched, nothing written
    # told to go anyway (flag or config key): the launcher's dry run shows what it would start
    code, _, err = run_cli(["run", str(path), "plan.memory_gb=0.02", "--no-plan-check", "--dry-run"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["run", str(path), "plan.memory_gb=0.02", "plan.check=false", "--dry-run"], capsys)
    assert code == 0, err


def test_chunked_loss_planned_in_fewer_chunks_keeps_flops(tmp_path):
    """The plan runs a chunked loss's loop as 3 chunks (memory) and as one (FLOPs): same FLOPs as any chunking."""
    from automodel.estimate import estimate

    plugins = load_plugins()
    flops = {}
    for chunk in (None, 8):
        path = quickstart_mock(tmp_path / str(chunk), loss={"name": "chunked_ce", "chunk_size": chunk})
        v = config_mod.validate(config_mod.load(str(path), []), plugins, world_size=1)
        flops[chunk] = estimate(v.config, plugins, v.layout).flops_per_step
    assert flops[8] == flops[None] > 0, flops
