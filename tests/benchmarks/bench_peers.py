"""automodel side by side with what users would pick instead: same model, data, batch, steps, optimizer.

    python tests/benchmarks/bench_peers.py                       # CPU: 5M Llama, 8 x 256 tokens, fp32
    python tests/benchmarks/bench_peers.py --quick               # fewer steps and rounds
    python tests/benchmarks/bench_peers.py --gpu                 # Llama-3.2-1B shapes, bf16 (not run yet)

Contenders, each in its own process (so that its peak memory, ``ru_maxrss`` from ``wait4``, is its own),
in interleaved rounds (rotated order), median over rounds:

* ``plain``: a plain PyTorch loop (HF model, torch AdamW, grad clipping): the reference.
* ``automodel``: the real CLI, ``automodel run cfg.yaml --plugin _steptimer`` (the plugin records step times).
* ``hf_trainer``: ``transformers.Trainer``, no eval, no saving, logging off, constant lr, ``adamw_torch``.
* ``torchtune``, ``nemo_automodel``: run from throwaway virtual environments (``--peer-venvs``, default
  /tmp/automodel-bench-peers/<name>) created with ``--install-peers`` (``pip install torch==<ours> <peer>``:
  a peer that needs another torch is reported, not installed). A peer that is not installed, does not
  import, or fails is listed with the reason; nothing in a peer is patched.

All: AdamW lr 1e-4 (betas 0.9/0.999, eps 1e-8, no weight decay), clip 1.0, constant lr, the ``mock`` dataset
(random tokens, seed 0), global batch 8 = one micro-batch, same steps. tokens/s counts input tokens over the
steps after the first three (one step's tokens over the median step time); "start -> step 1" is wall time from process start to the end of step 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BATCH, HERE, LLAMA_1B, LLAMA_5M, LR, SEQ, WARMUP, python_env, run_measured, table, tokens_per_s

PEERS = ["plain", "automodel", "hf_trainer", "torchtune", "nemo_automodel"]
# Pins beyond torch: torchtune 0.6.1 imports torchao.dtypes.nf4tensor, gone from current torchao (0.10.0 is
# its contemporary); NeMo Automodel 0.7.0's LoRA Triton kernel does not import under triton 3.9 (autotune
# key 'S' is not a kernel argument), which pip picks when nothing pins it.
VENV_PEERS = {"torchtune": ["torchtune==0.6.1", "torchao==0.10.0"], "nemo_automodel": ["nemo-automodel==0.7.0", "triton==3.5.1"]}
VENV_ROOT = Path(tempfile.gettempdir()) / "automodel-bench-peers"
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


# --------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and writes {"times": [...], "losses": [...]} to --out
# --------------------------------------------------------------------------------------------------


def mock_ids(n: int, seq: int, vocab: int):
    """The ``mock`` dataset's tokens (same generator and seed), without importing automodel."""
    import torch

    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))


def worker_plain(a: argparse.Namespace) -> dict[str, Any]:
    from _common import plain_steps

    times, losses = plain_steps(a.model_dir, a.steps, a.batch, a.seq, a.vocab, a.device, a.dtype)
    return {"times": times, "losses": losses}


def worker_hf_trainer(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = mock_ids(a.batch * a.steps, a.seq, a.vocab)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    times: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.time())

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=getattr(torch, a.dtype))
    args = TrainingArguments(
        output_dir=str(Path(a.out).parent / "hf_trainer"), per_device_train_batch_size=a.batch, max_steps=a.steps,
        learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        optim="adamw_torch", logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=a.device == "cpu", dataloader_num_workers=0, seed=0, data_seed=0,
    )
    result = Trainer(model=model, args=args, train_dataset=Data(), callbacks=[Timer()]).train()
    losses.append(result.training_loss)  # the mean over the run: per-step logging is off
    return {"times": times, "losses": losses}


def worker_torchtune(a: argparse.Namespace) -> dict[str, Any]:
    """torchtune's own Llama module and chunked-output loss, the loop of its full_finetune_single_device
    recipe (forward, chunked CE, backward, clip, AdamW step), weights converted from the same HF checkpoint."""
    import torch
    from safetensors.torch import load_file
    from torchtune.models.convert_weights import hf_to_tune
    from torchtune.models.llama3 import llama3
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    cfg = json.loads((Path(a.model_dir) / "config.json").read_text())
    torch.manual_seed(0)
    model = llama3(vocab_size=cfg["vocab_size"], num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                   num_kv_heads=cfg["num_key_value_heads"], embed_dim=cfg["hidden_size"], max_seq_len=cfg["max_position_embeddings"],
                   intermediate_dim=cfg["intermediate_size"], norm_eps=cfg["rms_norm_eps"], rope_base=cfg.get("rope_theta", 10000.0))
    sd = hf_to_tune(load_file(str(Path(a.model_dir) / "model.safetensors")), num_heads=cfg["num_attention_heads"],
                    num_kv_heads=cfg["num_key_value_heads"], dim=cfg["hidden_size"])
    model.load_state_dict(sd)
    model.to(device=a.device, dtype=getattr(torch, a.dtype)).train()
    loss_fn = CEWithChunkedOutputLoss()
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    ids_all = mock_ids(a.batch * a.steps, a.seq, a.vocab)
    times, losses = [], []
    for i in range(a.steps):
        ids = ids_all[i * a.batch:(i + 1) * a.batch].to(a.device)
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], loss_fn.ignore_index)], dim=1)  # as the recipe shifts
        loss = loss_fn(model(ids), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.time())
    return {"times": times, "losses": losses}


def worker_nemo_automodel(a: argparse.Namespace) -> dict[str, Any]:
    """NeMo Automodel's LLM fine-tuning recipe as shipped (its ``automodel finetune llm`` entry), on our
    model directory and its mock data; step times from the recipe's own per-step log records."""
    import logging

    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    cfg_path = Path(a.out).parent / "nemo.yaml"
    cfg_path.write_text(f"""
step_scheduler: {{global_batch_size: {a.batch}, local_batch_size: {a.batch}, ckpt_every_steps: 1000000, max_steps: {a.steps}, num_epochs: 1}}
dist_env: {{backend: gloo, timeout_minutes: 5}}
rng: {{_target_: nemo_automodel.components.training.rng.StatefulRNG, seed: 0, ranked: true}}
model: {{_target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path: {a.model_dir}}}
checkpoint: {{enabled: false, checkpoint_dir: {Path(a.out).parent / 'nemo_ckpt'}}}
loss_fn: {{_target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy}}
dataset: {{_target_: nemo_automodel.components.datasets.llm.mock.build_unpacked_dataset, num_sentences: {a.batch * a.steps}, max_sentence_len: {a.seq}, vocab_size: {a.vocab}}}
dataloader: {{_target_: torchdata.stateful_dataloader.StatefulDataLoader, collate_fn: nemo_automodel.components.datasets.utils.default_collater, shuffle: false}}
optimizer: {{_target_: torch.optim.AdamW, lr: {LR}, weight_decay: 0.0, betas: [0.9, 0.999], eps: 1.0e-8}}
""")
    times: list[float] = []

    class StepTimes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "step" in record.getMessage() and "loss" in record.getMessage():
                times.append(time.time())

    logging.getLogger().addHandler(StepTimes())
    recipe = TrainFinetuneRecipeForNextTokenPrediction(load_yaml_config(str(cfg_path)))
    recipe.setup()
    recipe.run_train_validation_loop()
    return {"times": times, "losses": []}


WORKERS = {"plain": worker_plain, "hf_trainer": worker_hf_trainer, "torchtune": worker_torchtune, "nemo_automodel": worker_nemo_automodel}


# --------------------------------------------------------------------------------------------------
# The parent: set up, run interleaved, report
# --------------------------------------------------------------------------------------------------


def peer_python(name: str, venvs: Path) -> tuple[str | None, str]:
    """(python of the peer's environment, or None with the reason it cannot run)."""
    if name not in VENV_PEERS:
        return sys.executable, ""
    py = venvs / name / "bin" / "python"
    if not py.exists():
        return None, f"not installed (run with --install-peers: pip install {' '.join(VENV_PEERS[name])} into {venvs / name})"
    module = {"torchtune": "torchtune", "nemo_automodel": "nemo_automodel"}[name]
    try:
        proc = subprocess.run([str(py), "-c", f"import torch, {module}; print(torch.__version__, {module}.__version__)"],
                              capture_output=True, text=True, timeout=120, env=python_env())
    except subprocess.TimeoutExpired:
        return None, "import timed out (120 s)"
    if proc.returncode != 0:
        return None, "does not import: " + last_error(proc.stdout + proc.stderr)
    return str(py), proc.stdout.strip()


def install_peers(names: list[str], venvs: Path) -> None:
    """Create a throwaway venv per peer with this torch pinned (pip refuses rather than pull another torch)."""
    import torch

    pin = f"torch=={torch.__version__.split('+')[0]}"
    for name in names:
        if name not in VENV_PEERS or (venvs / name / "bin" / "python").exists():
            continue
        venv = venvs / name
        print(f"installing {name} into {venv} ({pin} pinned)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", pin, *VENV_PEERS[name]], capture_output=True, text=True)
        if proc.returncode != 0:
            (venv / "INSTALL_FAILED").write_text(proc.stdout + proc.stderr)
            print(f"  {name}: pip failed: {last_error(proc.stdout + proc.stderr)}", flush=True)


def last_error(text: str) -> str:
    """The most telling line of a failure's output: the exception line of the last traceback."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ("Error" in ln or "Exception" in ln or ln.startswith("error")) and not ln.startswith("File "):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


def automodel_config(root: Path, a: argparse.Namespace, model_dir: Path | None, extra: dict[str, Any]) -> Path:
    import yaml

    model: dict[str, Any] = {"name": "hf", "pretrained": str(model_dir), "dtype": a.dtype}
    if a.gpu:
        from automodel.testing import char_tokenizer

        tok_dir = root / "tokenizer"
        if not tok_dir.exists():
            char_tokenizer().save_pretrained(tok_dir)
        model = {"name": "hf", "config": {"model_type": "llama", **LLAMA_1B}, "tokenizer": str(tok_dir), "dtype": a.dtype}
    cfg = {
        "seed": 0, "output_dir": str(root / "automodel_out"), "model": model,
        "dataset": {"name": "mock", "num_samples": a.batch * a.steps, "seq_len": a.seq, "vocab_size": a.vocab},
        "optimizer": {"name": "adamw", "lr": LR}, "clip_grad_norm": 1.0,
        "step_scheduler": {"global_batch_size": a.batch, "local_batch_size": a.local_batch or a.batch, "max_steps": a.steps,
                           "log_every_steps": 10},
        "checkpoint": {"export_hf": False, "save_final": False}, "loggers": [],
        "launcher": {"name": "local", "nproc_per_node": a.nproc},
        **extra,
    }
    path = root / f"automodel_{abs(hash(json.dumps(extra, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_one(name: str, a: argparse.Namespace, root: Path, model_dir: Path | None, python: str, extra: dict[str, Any]) -> dict[str, Any]:
    """One run of one contender in its own process: tokens/s, peak RSS, start -> step 1, or the error."""
    out = root / f"{name}.json"
    out.unlink(missing_ok=True)
    env = python_env(BENCH_STEP_TIMES=str(out))
    if name.startswith("automodel"):
        from _common import automodel_exe

        cmd = [*automodel_exe(), "run", str(automodel_config(root, a, model_dir, extra)), "--plugin", "_steptimer"]
    else:
        cmd = [python, str(HERE / "bench_peers.py"), "--worker", name, "--out", str(out), "--model-dir", str(model_dir),
               "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq), "--vocab", str(a.vocab),
               "--device", a.device, "--dtype", a.dtype]
    rc, start, peak_gb, text = run_measured(cmd, env=env, cwd=root, timeout=a.timeout)
    if rc != 0 or not out.exists():
        return {"error": f"exit {rc}: {last_error(text)}", "output": text[-3000:]}
    res = json.loads(out.read_text())
    times = res["times"]
    if len(times) < 2:
        return {"error": f"recorded {len(times)} step times", "output": text[-3000:]}
    return {"tps": tokens_per_s(times, a.batch, a.seq, WARMUP if len(times) > WARMUP + 2 else 0, robust=True), "peak_gb": peak_gb,
            "step_times": [b - a for a, b in zip(times, times[1:])],
            "first_step_s": times[0] - start, "loss": (res["losses"] or [math.nan])[-1], "steps": len(times),
            "gpu_peak_gb": res.get("last", {}).get("peak_mem_gb")}


def parameter_count(model_dir: Path | None, spec: dict[str, Any]) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir) if model_dir else AutoConfig.for_model("llama", **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def contenders(a: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (peer kind, automodel config sections) for the chosen peers."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for p in a.peers:
        if p == "automodel" and a.gpu:
            parallel = [{"name": "fsdp2"}] if a.nproc > 1 else []
            out["automodel"] = ("automodel", {"parallel": parallel})
            out["automodel+triton_ce"] = ("automodel", {"parallel": parallel, "loss": {"name": "triton_ce"}})
            if fp8_available():
                out["automodel+fp8"] = ("automodel", {"parallel": parallel, "transforms": [{"name": "fp8"}]})
        else:
            out[p] = (p, {})
    return out


def fp8_available() -> bool:
    from automodel.plugins import load_plugins

    try:
        return "fp8" in load_plugins().registry.names("model_transforms")
    except Exception:
        return False


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="steps per run, the first 3 untimed (default 23; --quick 13)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 2)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--peer-venvs", type=Path, default=VENV_ROOT)
    ap.add_argument("--install-peers", action="store_true", help="pip install torchtune / nemo-automodel into --peer-venvs first")
    ap.add_argument("--gpu", action="store_true", help="Llama-3.2-1B shapes, bf16, all visible GPUs (FSDP2 when > 1)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, help="also write the results here")
    # worker mode (internal)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=SEQ, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=LLAMA_5M["vocab_size"], help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        res = WORKERS[a.worker](a)
        if a.device == "cuda":
            import torch

            res["last"] = {"peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
        Path(a.out).write_text(json.dumps(res))
        return []

    a.steps = a.steps or (13 if a.quick else 20 + WARMUP)
    a.rounds = a.rounds or (2 if a.quick else 3)
    a.peers = [p for p in a.peers.split(",") if p]
    unknown = set(a.peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    a.local_batch, a.nproc = None, 1
    if a.gpu:
        import torch

        if not torch.cuda.is_available():
            ap.error("--gpu needs a CUDA device")
        a.device, a.dtype, a.seq, a.vocab = "cuda", "bfloat16", 2048, LLAMA_1B["vocab_size"]
        a.nproc = torch.cuda.device_count()
        a.batch, a.local_batch = 4 * a.nproc, 4
        if a.nproc > 1:  # the peers here are single-device loops: compare per GPU
            print(f"note: automodel uses {a.nproc} GPUs (FSDP2); plain and hf_trainer one GPU; tokens/s is reported per GPU")

    if a.install_peers:
        install_peers(a.peers, a.peer_venvs)

    root = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    model_dir = None
    if not a.gpu:
        from automodel.testing import tiny_model

        model_dir = tiny_model(root, **LLAMA_5M)
    else:
        from automodel.testing import tiny_model

        model_dir = tiny_model(root, **LLAMA_1B, model_type="llama") if set(a.peers) - {"automodel"} else None
    n_params = parameter_count(model_dir, LLAMA_1B)

    runs = contenders(a)
    pythons: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, (kind, _) in runs.items():
        py, why = peer_python(kind, a.peer_venvs)
        if py is None:
            skipped[name] = why
        else:
            pythons[name] = py
            if why:
                print(f"{name}: torch/{kind} versions {why}")
    print(f"model: Llama {n_params / 1e6:.2f}M parameters, batch {a.batch} x {a.seq} tokens, {a.dtype}, {a.steps} steps "
          f"({WARMUP} untimed), {a.rounds} interleaved rounds, device {a.device}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {n: [] for n in pythons}
    names = list(pythons)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for name in order:
            if any("error" in x for x in results[name]):
                continue  # failed once: do not spend minutes failing again
            (root / f"r{r}").mkdir(exist_ok=True)
            res = run_one(name, a, root / f"r{r}", model_dir, pythons[name], runs[name][1])
            results[name].append(res)
            if "error" in res:
                print(f"  round {r + 1}: {name:<22} failed: {res['error']}", flush=True)
            else:
                print(f"  round {r + 1}: {name:<22} {res['tps']:>10,.0f} tok/s  peak {res['peak_gb']:.2f} GiB  "
                      f"start->step 1 {res['first_step_s']:.1f} s", flush=True)

    rows = summarize(results, skipped, a, n_params)
    print_rows(rows, a)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return rows


def summarize(results: dict[str, list[dict[str, Any]]], skipped: dict[str, str], a: argparse.Namespace, n_params: int) -> list[dict[str, Any]]:
    peak_flops = None
    if a.gpu:
        import torch

        name = torch.cuda.get_device_name(0)
        peak_flops = next((tf * 1e12 for k, tf in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows: list[dict[str, Any]] = []
    for name, rs in results.items():
        errors = [r["error"] for r in rs if "error" in r]
        if errors:
            rows.append({"name": name, "error": ("does not run on CPU as shipped: " if a.device == "cpu" and name == "nemo_automodel" else "failed: ") + errors[0]})
            continue
        tps = statistics.median(r["tps"] for r in rs)
        if name.startswith("automodel") and a.nproc > 1:
            tps /= a.nproc
        row = {"name": name, "tokens_per_s": tps, "peak_rss_gb": statistics.median(r["peak_gb"] for r in rs),
               "first_step_s": statistics.median(r["first_step_s"] for r in rs), "runs": [r["tps"] for r in rs],
               "loss": rs[-1]["loss"]}
        if peak_flops:
            row["mfu"] = 6 * n_params * tps / peak_flops
        if rs[-1].get("gpu_peak_gb") and a.gpu:
            row["gpu_peak_gb"] = rs[-1]["gpu_peak_gb"]
        rows.append(row)
    rows += [{"name": n, "error": why} for n, why in skipped.items()]
    base = next((r for r in rows if r["name"] == "plain" and "tokens_per_s" in r), None)
    for r in rows:
        if base and "tokens_per_s" in r:
            r["vs_plain"] = r["tokens_per_s"] / base["tokens_per_s"]
    return rows


def print_rows(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    header = ["framework", "tokens/s", "vs plain", "peak RSS GiB", "start->step 1 s", "last loss"] + (["MFU", "GPU peak GiB"] if a.gpu else [])
    body, notes = [], []
    for r in rows:
        if "error" in r:
            body.append([r["name"], "-", "-", "-", "-", "-"] + (["-", "-"] if a.gpu else []))
            notes.append(f"{r['name']}: {r['error']}")
            continue
        body.append([r["name"], f"{r['tokens_per_s']:,.0f}", f"{r['vs_plain']:.3f}" if "vs_plain" in r else "-",
                     f"{r['peak_rss_gb']:.2f}", f"{r['first_step_s']:.1f}", f"{r['loss']:.3f}"]
                    + ([f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-", f"{r['gpu_peak_gb']:.1f}" if "gpu_peak_gb" in r else "-"]
                       if a.gpu else []))
    print()
    print(table(body, header))
    for n in notes:
        print("  " + n)
    ours = next((r for r in rows if r["name"] == "automodel" and "vs_plain" in r), None)
    if ours:
        print(f"automodel vs plain PyTorch: {ours['vs_plain']:.3f} (overhead {100 * (1 - ours['vs_plain']):+.1f}%; goal < 3%)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
