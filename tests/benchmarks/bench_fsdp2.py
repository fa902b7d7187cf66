"""FSDP2 benchmark on CPU (gloo): per-rank peak memory 1 vs 2 ranks, tokens/s vs the builtin DDP.

    python tests/benchmarks/bench_fsdp2.py [--steps 6] [--layers 8] [--hidden 768]

Model: a Llama built from config (random init, fp32, ~70M parameters = ~280 MB by default), trained
with AdamW on the ``mock`` dataset through the real CLI (``automodel run``). Reported per run: peak
host memory of rank 0 (``ru_maxrss``; ranks are symmetric), the same minus a baseline run of a tiny
model (interpreter, torch, data: what the model does not cost), and tokens/s over the steps after the
first. A second part loads the saved safetensors with meta-device init and measures, on every rank,
how much host memory materializing + loading takes (each rank reads only its shards) against reading
the full files (what every rank did before).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> float:
    """Reset the process's peak RSS (Linux ``clear_refs``); returns the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def llama_config(layers: int, hidden: int) -> dict:
    return {
        "model_type": "llama", "vocab_size": 8192, "hidden_size": hidden, "intermediate_size": hidden * 8 // 3 // 64 * 64,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64,
        "max_position_embeddings": 512, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }


def write_config(root: Path, name: str, model: dict, parallel: list, nproc: int, steps: int, seq_len: int) -> Path:
    cfg = {
        "seed": 0,
        "output_dir": str(root / name),
        "model": model,
        "dataset": {"name": "mock", "num_samples": 4096, "seq_len": seq_len, "vocab_size": model.get("config", {}).get("vocab_size", 48)},
        "optimizer": {"name": "adamw", "lr": 1.0e-4},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4, "max_steps": steps, "log_every_steps": 1},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [{"name": "jsonl"}],
        "parallel": parallel,
        "launcher": {"name": "local", "nproc_per_node": nproc},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# glibc raises its mmap threshold after big frees and then keeps freed memory in the heap, so RSS
# would report memory the program no longer uses; a fixed threshold makes RSS track live memory.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run(cfg: Path, nproc: int) -> list[dict]:
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
    env.pop("AUTOMODEL_LAUNCHED", None)
    if nproc == 1:  # one rank, but distributed (torchrun) so that fsdp2 really runs on a 1-rank mesh
        env["AUTOMODEL_LAUNCHED"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "automodel", "run", str(cfg)]
    else:
        cmd = [sys.executable, "-m", "automodel", "run", str(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    out = yaml.safe_load(cfg.read_text())["output_dir"]
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def summarize(metrics: list[dict]) -> tuple[float, float]:
    later = metrics[1:] or metrics
    return max(m["peak_mem_gb"] for m in metrics) * 1024, sum(m["tokens_per_s"] for m in later) / len(later)


# -- part 2: loading memory per rank (torchrun worker) ---------------------------------------------


def _old_materialize(model, ctx, model_dir: str) -> None:
    """What materialize() did before per-rank loading: every rank reads every tensor."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=ctx.device)
    full = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        full.update(load_file(str(f)))
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))


def load_worker(model_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from automodel.builtin.models import hf
    from automodel.context import Context
    from automodel.weights import materialize
    from automodel_fsdp2.parallel import FSDP2
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))
    ctx = Context(rank=rank, world_size=world, device=torch.device("cpu"), mesh=mesh, meta_init=True, config={"seed": 0})
    row = []
    for load in (materialize, lambda m, c: _old_materialize(m, c, model_dir)):
        model, _ = hf(ctx, pretrained=model_dir)
        model = FSDP2().apply(model, mesh, ctx)
        anon = _status_mb("RssAnon")
        start = reset_peak()
        load(model, ctx)
        row += [peak_mb() - start, _status_mb("RssAnon") - anon]
        del model
    rows = [torch.zeros(len(row), dtype=torch.float64) for _ in range(world)]
    dist.all_gather(rows, torch.tensor(row, dtype=torch.float64))
    if rank == 0:
        print("LOAD " + json.dumps([r.tolist() for r in rows]), flush=True)
    dist.destroy_process_group()


def load_bench(model_dir: Path, nproc: int) -> list[list[float]]:
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(HERE), "--load-worker", str(model_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"load benchmark failed:\n{proc.stderr[-6000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LOAD "))
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--load-worker", metavar="MODEL_DIR")
    args = ap.parse_args()
    if args.load_worker:
        return load_worker(args.load_worker)

    from automodel.testing import char_tokenizer

    root = Path(tempfile.mkdtemp(prefix="bench_fsdp2_"))
    tok = root / "tokenizer"
    char_tokenizer().save_pretrained(tok)
    spec = llama_config(args.layers, args.hidden)
    model = {"name": "hf", "config": spec, "tokenizer": str(tok)}
    tiny = {"name": "hf", "config": {**spec, "num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}, "tokenizer": str(tok)}
    n_params = sum(
        v for v in (
            2 * spec["vocab_size"] * spec["hidden_size"],
            spec["num_hidden_layers"] * (4 * spec["hidden_size"] ** 2 + 3 * spec["hidden_size"] * spec["intermediate_size"]),
        )
    )
    print(f"model: llama {args.layers} layers x {args.hidden} hidden, ~{n_params / 1e6:.0f}M params = {n_params * 4 / 2**20:.0f} MiB fp32; "
          f"AdamW, global batch 8 x {args.seq_len} tokens, {args.steps} steps, CPU gloo, {os.cpu_count()} cores", flush=True)

    runs = {
        "baseline (tiny model, fsdp2, 2 ranks)": (tiny, [{"name": "fsdp2"}], 2),
        "fsdp2, 1 rank": (model, [{"name": "fsdp2"}], 1),
        "fsdp2, 2 ranks": (model, [{"name": "fsdp2"}], 2),
        "ddp, 2 ranks": (model, [{"name": "ddp"}], 2),
    }
    results = {}
    for i, (label, (m, parallel, nproc)) in enumerate(runs.items()):
        cfg = write_config(root, f"run{i}", m, parallel, nproc, args.steps, args.seq_len)
        results[label] = summarize(run(cfg, nproc))
        print(f"  {label:<40} peak rank-0 RSS {results[label][0]:8.0f} MiB   {results[label][1]:9.1f} tokens/s", flush=True)

    base = results["baseline (tiny model, fsdp2, 2 ranks)"][0]
    one, two, ddp = results["fsdp2, 1 rank"], results["fsdp2, 2 ranks"], results["ddp, 2 ranks"]
    print("\ntraining (peak per rank; 'model' = peak minus the tiny-model baseline):")
    print(f"  {'':<16}{'peak MiB':>10}{'model MiB':>11}{'tokens/s':>10}")
    for label, (peak, tps) in (("fsdp2 1 rank", one), ("fsdp2 2 ranks", two), ("ddp 2 ranks", ddp)):
        print(f"  {label:<16}{peak:>10.0f}{peak - base:>11.0f}{tps:>10.1f}")
    print(f"  memory per rank, fsdp2 2 ranks / 1 rank: {two[0] / one[0]:.2f} (peak), {(two[0] - base) / (one[0] - base):.2f} (model)")
    print(f"  memory per rank, fsdp2 / ddp (2 ranks):  {two[0] / ddp[0]:.2f} (peak), {(two[0] - base) / (ddp[0] - base):.2f} (model)")
    print(f"  tokens/s, fsdp2 / ddp (2 ranks):         {two[1] / ddp[1]:.2f}")

    # -- loading pretrained safetensors with meta init ----------------------------------------------
    from transformers import AutoConfig, AutoModelForCausalLM

    s = dict(spec)
    hf_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(s.pop("model_type"), **s))
    pretrained = root / "pretrained"
    hf_model.save_pretrained(pretrained)
    char_tokenizer().save_pretrained(pretrained)
    del hf_model
    size = sum(f.stat().st_size for f in pretrained.glob("*.safetensors")) / 2**20
    print(f"\nloading {size:.0f} MiB of safetensors into a meta-initialized fsdp2 model, per rank (MiB):")
    print("  peak = growth of peak RSS while loading (includes the mapped file pages read);")
    print("  kept = anonymous memory still held afterwards (the shards). before = every rank reads all tensors")
    print(f"  {'':<22}{'peak':>8}{'kept':>8}{'peak before':>13}{'kept before':>13}")
    for nproc in (1, 2):
        for r, (peak, kept, old_peak, old_kept) in enumerate(load_bench(pretrained, nproc)):
            print(f"  {nproc} rank(s), rank {r}     {peak:8.0f}{kept:8.0f}{old_peak:13.0f}{old_kept:13.0f}")


if __name__ == "__main__":
    main()
