"""automodel-pp on CPU with gloo: every schedule against one process, the same global batch.

Three launches in all (a launch, not a run, is what costs time here): torchrun x 2 processes runs the
five schedules at pp=2 (gpipe also checkpoints and exports), one process runs the reference and a
resume from the pp=2 checkpoint, torchrun x 4 runs pp=4 and dp2 x pp2 (fsdp2) for two steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from automodel import config as config_mod
from automodel.errors import AutomodelError
from automodel.plugins import load_plugins

HERE = Path(__file__).parent
QUICKSTART = HERE.parents[2] / "examples" / "quickstart"
STEPS = 4
PP = "parallel=[{{name: pp, size: {size}, microbatches: 4, schedule: {schedule}}}]"
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b", "interleaved_zb", "zbv")
EXPORT = "checkpoint={export_hf: true, save_final: true, keep_last: 5}"
VALIDATE = f"step_scheduler.val_every_steps={STEPS}"  # validation through the pipeline (forward-only schedule)


def base_config(directory: Path) -> Path:
    """The quickstart's model (tiny Llama from config, tied embeddings) and data, 16 sequences a step."""
    quick = yaml.safe_load((QUICKSTART / "config.yaml").read_text())
    cfg = {
        "seed": 1234, "output_dir": str(directory / "run"),
        "model": {**quick["model"], "tokenizer": str(QUICKSTART / "tokenizer")},
        "dataset": {**quick["dataset"], "path": str(QUICKSTART / "data" / "train.jsonl")},
        "validation_dataset": {**quick["validation_dataset"], "path": str(QUICKSTART / "data" / "val.jsonl")},
        "optimizer": quick["optimizer"], "lr_scheduler": {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
        "clip_grad_norm": 1.0,
        "step_scheduler": {"global_batch_size": 16, "local_batch_size": 8, "max_steps": STEPS, "log_every_steps": 1,
                           "val_every_steps": None, "val_max_batches": 2},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [{"name": "jsonl"}],
    }
    path = directory / "base.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def launch(nproc: int, out: Path, base: Path, runs: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PP_HANG_S": "480"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    driver = [str(HERE / "pp_driver.py"), str(out), str(base), *runs]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *driver]
           if nproc > 1 else [sys.executable, *driver])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pp")
    base = base_config(root)
    pp2 = [f"{s}=output_dir={root / s};{PP.format(size=2, schedule=s)}" for s in SCHEDULES]
    pp2[0] += f";{EXPORT};{VALIDATE};step_scheduler.ckpt_every_steps=2"
    pp2[1] += ";loss={name: chunked_ce}"  # a fused loss (hidden states + lm_head weight) on the last stage
    pp2[2] = pp2[2].replace("}]", ", activation_checkpointing: true}]")
    out = launch(2, root / "pp2.json", base, pp2)
    out.update(launch(1, root / "single.json", base, [
        f"single=output_dir={root / 'single'};{EXPORT};{VALIDATE};step_scheduler.ckpt_every_steps=2",
        f"resumed=output_dir={root / 'resumed'};checkpoint.resume={root / 'gpipe' / 'checkpoints' / 'step_2'}",
    ]))
    out["root"] = root
    return out


def test_every_schedule_matches_one_process(runs: dict) -> None:
    """gpipe, 1f1b (with the fused chunked_ce loss), interleaved_1f1b (with activation checkpointing), zero bubble."""
    want = runs["single"]
    assert len(want["loss"]) == STEPS and want["loss"][-1] < want["loss"][0]  # it trains
    for schedule in SCHEDULES:
        got = runs[schedule]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-4), schedule
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), schedule  # clipped over both stages
        assert len(got["schedule_s"]) == STEPS  # the schedule ran every step
    assert len(want["val_loss"]) == 1
    assert runs["gpipe"]["val_loss"] == pytest.approx(want["val_loss"], abs=1e-5)  # validation through the pipeline


def test_pp2_checkpoint_resumes_on_one_process(runs: dict) -> None:
    """DCP written by 2 pipeline stages (each rank its own parameters), loaded into the whole model."""
    assert runs["resumed"]["loss"] == pytest.approx(runs["single"]["loss"][2:], abs=1e-4)


def test_export_is_one_hugging_face_directory(runs: dict) -> None:
    from transformers import AutoModelForCausalLM

    got = AutoModelForCausalLM.from_pretrained(runs["root"] / "gpipe" / "hf")
    want = AutoModelForCausalLM.from_pretrained(runs["root"] / "single" / "hf")
    assert len(list((runs["root"] / "gpipe" / "hf").glob("*.safetensors"))) == 1
    got_sd, want_sd = got.state_dict(), want.state_dict()
    assert set(got_sd) == set(want_sd)
    for k in want_sd:
        torch.testing.assert_close(got_sd[k], want_sd[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()  # tied again on load


def test_four_stages_and_dp2_x_pp2_with_fsdp2(runs: dict) -> None:
    """4 processes on 2 cores: two steps each of pp=4 (1f1b) and fsdp2 data parallel x pp=2, and the
    1-process checkpoint of step 2 resumed at dp2 x pp2 (tied embeddings on both end stages)."""
    root = runs["root"]
    two = "step_scheduler.max_steps=2"
    dp2pp2 = "parallel=[{name: pp, size: 2, microbatches: 4, schedule: 1f1b}, {name: fsdp2, meta_init: false}]"
    four = launch(4, root / "four.json", root / "base.yaml", [
        f"pp4=output_dir={root / 'pp4'};{two};{PP.format(size=4, schedule='1f1b')}",
        f"dp2pp2=output_dir={root / 'dp2pp2'};{two};{dp2pp2}",
        f"from1=output_dir={root / 'from1'};{dp2pp2};checkpoint.resume={root / 'single' / 'checkpoints' / 'step_2'}",
    ])
    for name in ("pp4", "dp2pp2"):
        assert four[name]["loss"] == pytest.approx(runs["single"]["loss"][:2], abs=1e-4), name
        assert four[name]["grad_norm"] == pytest.approx(runs["single"]["grad_norm"][:2], rel=1e-4), name
    assert four["from1"]["loss"] == pytest.approx(runs["single"]["loss"][2:], abs=1e-4)


# -- validation: refused before anything starts ---------------------------------------------------


def _problems(tmp_path: Path, parallel: list, world_size: int = 2, **extra) -> str:
    raw = yaml.safe_load(base_config(tmp_path).read_text())
    raw["parallel"] = parallel
    raw.update(extra)
    with pytest.raises(AutomodelError) as err:
        config_mod.validate(raw, load_plugins(), world_size=world_size)
    return str(err.value)


@pytest.mark.parametrize(("parallel", "expect"), [
    ([{"name": "pp", "size": 2, "schedule": "pipedream"}], "unknown schedule 'pipedream'"),
    ([{"name": "pp", "size": 2, "schedule": "1f1b", "microbatches": 1}], "at least as many micro-batches as stages (2)"),
    ([{"name": "pp", "size": 2, "schedule": "interleaved_1f1b", "microbatches": 3}], "at least as many micro-batches as stages (4)"),
    ([{"name": "pp", "size": 2, "schedule": "gpipe", "microbatches": 3}], "do not divide step_scheduler.global_batch_size 16"),
    ([{"name": "pp", "size": 2, "schedule": "1f1b", "stages_per_rank": 2}], "1f1b runs one stage per rank"),
    ([{"name": "pp", "size": 1}], "must be an int >= 2"),
    ([{"name": "pp", "size": 2, "split_points": [1, 2]}], "2 stages need 1 split points"),
    ([{"name": "pp", "size": 2}, {"name": "tp", "size": 1}], "pp composes with fsdp2 and fsdp2_replicate only"),
    ([{"name": "pp", "size": 4, "schedule": "interleaved_1f1b"}], "8 stages need at least 8 decoder blocks"),
])
def test_bad_layouts_are_refused_at_validate(tmp_path: Path, parallel: list, expect: str) -> None:
    text = _problems(tmp_path, parallel, world_size=parallel[0].get("size") if parallel[0].get("size", 0) > 1 else 2)
    assert expect in text, text
    assert "parallel.0" in text, text  # the key is named


def test_zero_bubble_with_a_fused_loss_is_refused(tmp_path: Path) -> None:
    text = _problems(tmp_path, [{"name": "pp", "size": 2, "schedule": "zbv"}], loss={"name": "chunked_ce"})
    assert "parallel.0.schedule" in text and "fused loss 'chunked_ce'" in text, text


def test_pp_size_must_fit_the_processes(tmp_path: Path) -> None:
    text = _problems(tmp_path, [{"name": "pp", "size": 2}], world_size=3)
    assert "does not divide the 3 processes" in text, text
