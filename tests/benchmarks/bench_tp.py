"""Tensor-parallel benchmark: tokens/s and memory per rank, no TP (1 process) vs TP=2 (2 processes)
vs TP=2 with sequence + loss parallelism.

    python tests/benchmarks/bench_tp.py [--steps 6] [--layers 4] [--hidden 512] [--seq 512] [--batch 4]

Each configuration runs in its own ``torch.distributed.run`` (gloo on CPU, nccl on GPU): a Llama built
from config (random init, fp32), sharded by ``automodel_tp.parallel.TensorParallel``, trained with the
builtin ``masked_ce`` loss and AdamW on random tokens. Reported per rank (rank 0; ranks are symmetric):

* ``state MB``: local parameters + gradients + AdamW moments (exact, from the local shards);
* ``act MB``: bytes autograd saved for backward in one forward pass (local tensors, deduplicated by
  storage), the activation memory TP and SP divide;
* ``logits MB``: the logits tensor this rank holds (loss parallel keeps it vocabulary-sharded);
* ``peak MB``: on CUDA ``max_memory_allocated``; on CPU the rise of peak RSS over the training steps
  (``VmHWM`` after resetting it, minus RSS before), which includes allocator slack;
* ``tokens/s``: global batch tokens per second over the steps after the warm-up (the same batch on
  every TP rank: TP does not add data parallelism).

On a CPU with few cores TP cannot be faster (the ranks share the cores and add collectives); the
memory columns are the point there. On GPUs, run it on a lent machine for real throughput numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from automodel.builtin.losses import MaskedCrossEntropy
    from transformers import AutoConfig, AutoModelForCausalLM

    distributed = "RANK" in os.environ
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75) // 64 * 64,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=max(args.hidden // 128, 2),
        max_position_embeddings=args.seq, tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).to(device)
    if args.tp > 1:
        from automodel_tp.parallel import TensorParallel
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (args.tp,), mesh_dim_names=("tp",))
        ctx = type("Ctx", (), {"is_main": rank == 0})()
        model = TensorParallel(size=args.tp, sequence_parallel=args.sp, loss_parallel=args.sp).apply(model, mesh, ctx)
    model.train()
    loss_fn = MaskedCrossEntropy()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def local(t: torch.Tensor) -> torch.Tensor:
        return t._local_tensor if hasattr(t, "_local_tensor") else t

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    n = torch.tensor(float(labels.numel()), device=device)

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        lt = local(t)
        lt = getattr(lt, "elem", lt)  # functional-collective results wrap their tensor
        try:
            storage = lt.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:
            saved[id(t)] = lt.numel() * lt.element_size()
        return t

    def step(measure: bool = False) -> tuple[float, float]:
        if measure:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                logits = model(input_ids=ids, use_cache=False).logits
        else:
            logits = model(input_ids=ids, use_cache=False).logits
        loss = loss_fn(labels=labels, num_label_tokens=n, logits=logits)
        loss.backward()
        logits_mb = local(logits).numel() * logits.element_size() / 2**20
        opt.step()
        opt.zero_grad(set_to_none=False)
        return float(loss), logits_mb

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
        if distributed:
            dist.barrier()

    loss, logits_mb = step(measure=True)  # warm-up: allocates grads and optimizer state
    act_mb = sum(saved.values()) / 2**20
    state = sum(local(p).numel() * local(p).element_size() for p in params)
    state += sum(local(p.grad).numel() * local(p.grad).element_size() for p in params if p.grad is not None)
    state += sum(local(v).numel() * local(v).element_size() for s in opt.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step()
    sync()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _status_mb("VmHWM") - base
    if rank == 0:
        result = {"tokens_per_s": args.steps * args.batch * args.seq / elapsed, "state_mb": state / 2**20,
                  "act_mb": act_mb, "logits_mb": logits_mb, "peak_mb": peak, "loss": loss, "device": str(device)}
        Path(args.out).write_text(json.dumps(result))
    if distributed:
        dist.destroy_process_group()


def run(name: str, tp: int, sp: bool, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    worker_args = [str(HERE), "--worker", "--out", str(out), "--tp", str(tp), "--steps", str(args.steps),
                   "--layers", str(args.layers), "--hidden", str(args.hidden), "--seq", str(args.seq),
                   "--batch", str(args.batch), "--vocab", str(args.vocab)] + (["--sp"] if sp else [])
    if tp > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tp}", *worker_args]
    else:
        cmd = [sys.executable, *worker_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // tp))}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--sp", action="store_true")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("no TP (1 process)", run("tp1", 1, False, args, Path(tmp))),
            ("TP=2", run("tp2", 2, False, args, Path(tmp))),
            ("TP=2 + SP + loss parallel", run("tp2sp", 2, True, args, Path(tmp))),
        ]
    base = rows[0][1]
    print(f"llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, batch {args.batch} x seq {args.seq}, "
          f"{args.steps} timed steps, fp32 AdamW, device {base['device']}; memory per rank (rank 0)")
    cols = [("tokens/s", "tokens_per_s"), ("state MB", "state_mb"), ("act MB", "act_mb"), ("logits MB", "logits_mb"),
            ("peak MB", "peak_mb")]
    print(f"{'':28}" + "".join(f"{c:>20}" for c, _ in cols) + f"{'loss':>10}")
    for name, r in rows:
        cells = []
        for _, key in cols:
            ratio = r[key] / base[key] if base[key] else float("nan")
            cells.append(f"{r[key]:10.1f} ({ratio:4.2f}x)")
        print(f"{name:28}" + "".join(f"{c:>20}" for c in cells) + f"{r['loss']:10.4f}")


if __name__ == "__main__":
    main()
