"""Run under torchrun by tests/core/test_plan_multirank.py: for each config given, measure this rank's
peak with automodel.estimate.measure (the real Trainer, real gloo collectives, two optimizer steps under
the memory tracker) and have rank 0 write every rank's peak and breakdown to the output JSON."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist
from automodel import config as config_mod
from automodel.estimate import measure
from automodel.plugins import load_plugins


def main(out_path: str, *configs: str) -> None:
    plugins = load_plugins()
    results = {}
    for path in configs:
        v = config_mod.validate(config_mod.load(path, []), plugins, world_size=2)
        mine = measure(v.config, plugins, v.layout)
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        results[path] = ranks
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
