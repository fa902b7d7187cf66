"""Checkpoint save/load time and size for the quickstart model (CPU, one process).

    python tests/benchmarks/bench_checkpoint.py [--repeat 5]

Side by side: the ``default`` checkpointer (atomic DCP directory: fsync, manifest, RNG, config) against a
plain ``torch.save`` of the same model + optimizer + scheduler state (no atomicity, no fsync, no resharding),
and the Hugging Face export. Times are medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from automodel.builtin.checkpoint import Checkpointer
from automodel.context import Context
from automodel.state import TrainState
from automodel.testing import char_tokenizer

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "config.yaml"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = yaml.safe_load(QUICKSTART.read_text())
    spec = dict(cfg["model"]["config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.randint(3, 48, (8, 32))
    model(input_ids=ids, labels=ids).loss.backward()  # Adam state exists: a real checkpoint's content
    optimizer.step()
    scheduler.step()
    state = {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler, "train_state": TrainState(step=1)}
    n_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ctx = Context(output_dir=tmp / "run", config={"model": cfg["model"], "transforms": []})
        ckpt = Checkpointer(ctx, keep_last=1)
        step = iter(range(1, 10**6))
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            saved: list[Path] = []
            save_s = median_time(lambda: saved.append(ckpt.save(state, next(step))), args.repeat)
            last = saved[-1]
            dcp_size = dir_size(last)
            load_s = median_time(lambda: ckpt.load(state), args.repeat)

        plain = tmp / "plain.pt"

        def plain_save() -> None:
            torch.save({k: v.state_dict() for k, v in state.items()}, plain)

        def plain_load() -> None:
            sd = torch.load(plain, weights_only=False)
            model.load_state_dict(sd["model"])
            optimizer.load_state_dict(sd["optimizer"])
            scheduler.load_state_dict(sd["lr_scheduler"])

        plain_save_s = median_time(plain_save, args.repeat)
        plain_size = plain.stat().st_size
        plain_load_s = median_time(plain_load, args.repeat)

        out = tmp / "hf"

        def export() -> None:
            shutil.rmtree(out, ignore_errors=True)
            ckpt.export(model, char_tokenizer(), out)

        export_s = median_time(export, args.repeat)
        export_size = dir_size(out)

    mib = 2**20
    print(f"quickstart model: {n_params / 1e6:.2f}M parameters, fp32, AdamW; median of {args.repeat} runs, CPU")
    print(f"{'':28}{'default (DCP, atomic)':>24}{'torch.save (plain)':>22}{'ratio':>9}")
    print(f"{'save time':28}{save_s * 1e3:>21.1f} ms{plain_save_s * 1e3:>19.1f} ms{save_s / plain_save_s:>8.2f}x")
    print(f"{'load time':28}{load_s * 1e3:>21.1f} ms{plain_load_s * 1e3:>19.1f} ms{load_s / plain_load_s:>8.2f}x")
    print(f"{'size':28}{dcp_size / mib:>20.2f} MiB{plain_size / mib:>18.2f} MiB{dcp_size / plain_size:>8.2f}x")
    print(f"{'HF export (safetensors)':28}{export_s * 1e3:>21.1f} ms, {export_size / mib:.2f} MiB "
          f"({export_size / dcp_size:.2f}x the checkpoint: weights only)")


if __name__ == "__main__":
    main()
