"""Several training runs in ONE torchrun launch (the launch, not the runs, is what costs time on CPU).

    torchrun --nproc_per_node N pp_driver.py OUT.json BASE.yaml NAME=OVERRIDE[;OVERRIDE...] ...

Each NAME trains the config BASE.yaml with its overrides (';'-separated) in this process group, one
after the other; rank 0 writes {NAME: [loss per step], ...} plus per-run timings and peak memory to OUT.json.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from automodel import config as config_mod
from automodel.plugins import load_plugins
from automodel.testing import read_metrics
from automodel.train import Trainer


def state_bytes(trainer: Trainer) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (local shards)."""
    import torch

    def size(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    total = sum(size(p) for p in trainer.model.parameters())
    total += sum(size(p.grad) for p in trainer.model.parameters() if p.grad is not None)
    for state in trainer.optimizer.state.values():
        total += sum(size(v) for v in state.values() if isinstance(v, torch.Tensor))
    return total


def main() -> None:
    if os.environ.get("PP_HANG_S"):  # a hang becomes every thread's traceback and exit, not a stuck test
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["PP_HANG_S"]), exit=True)
    out_path, base, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
    # one process group for every run: re-creating it under torchrun's store is not supported
    import torch.distributed as dist

    destroy, dist.destroy_process_group = dist.destroy_process_group, lambda *a, **k: None
    plugins = load_plugins()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for spec in runs:
        name, _, overrides = spec.partition("=")
        raw = config_mod.load(base, [o for o in overrides.split(";") if o])
        validated = config_mod.validate(raw, plugins, base, world_size=world, run_targets=True)
        start = time.perf_counter()
        trainer = Trainer(validated)
        pp = next((p for p in validated.layout.parallelizers if p.dim == "pp"), None)
        trainer.run()
        wall = time.perf_counter() - start
        mine = {"timings": pp.timings if pp is not None else [], "state_bytes": state_bytes(trainer),
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        ranks = [mine]
        if dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        if int(os.environ.get("RANK", "0")) == 0:
            metrics = read_metrics(validated.config["output_dir"])
            with open(os.path.join(validated.config["output_dir"], "metrics.jsonl")) as f:
                val = [r["val_loss"] for r in map(json.loads, f) if "val_loss" in r]
            results[name] = {
                "loss": [m["loss"] for m in metrics], "val_loss": val, "grad_norm": [m["grad_norm"] for m in metrics],
                "wall_s": wall, "schedule_s": [t["schedule_s"] for t in pp.timings] if pp is not None else [],
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "ranks": ranks,
            }
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    if dist.is_initialized():
        destroy()


if __name__ == "__main__":
    main()
