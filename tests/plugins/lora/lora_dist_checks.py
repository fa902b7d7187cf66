"""LoRA on a meta-device model sharded by FSDP2 over 2 processes, run under torchrun by test_lora.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 lora_dist_checks.py MODEL_DIR

For pretrained and random (config) base weights and several adapter options, the sharded model must
hold exactly the weights of the same LoRA model built unsharded in one process (base weights loaded
per-rank shard, adapters initialized as peft does, modules_to_save copies equal to the base), and
no rank may have held the whole base model. Prints ``ok <case>`` on rank 0; a mismatch raises.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from automodel.builtin.models import hf
from automodel.context import Context
from automodel.testing import TINY_LLAMA, exit_without_teardown
from automodel.weights import init_weights, materialize
from automodel_fsdp2.parallel import FSDP2
from automodel_lora.transform import LoRA
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

SEED = 1234
CASES = {
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "dora_saved_random_ab": {"r": 4, "use_dora": True, "modules_to_save": ["lm_head"], "init_lora_weights": False},
    "gaussian_rslora": {"r": 4, "init_lora_weights": "gaussian", "use_rslora": True, "seed": 7},
}


def main(model_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))
    for name, spec in CASES.items():
        for pretrained in (True, False):
            loader = {"pretrained": str(model_dir)} if pretrained else {"config": dict(TINY_LLAMA), "tokenizer": str(model_dir)}
            ctx = Context(rank=rank, world_size=world, device=torch.device("cpu"), mesh=mesh, meta_init=True,
                          config={"seed": SEED}, dp_rank=rank, dp_size=world)
            model, _ = hf(ctx, **loader)
            transform = LoRA(**spec)
            model = transform.apply(model, ctx)
            assert all(p.is_meta for p in model.parameters()), "the lora transform materialized the model"
            model = FSDP2().apply(model, mesh, ctx)
            materialize(model, ctx, [transform])
            local = sum(p.to_local().numel() for p in model.parameters())
            total = sum(p.numel() for p in model.parameters())
            assert local <= total // 2 + 64 * 8, f"rank holds {local} of {total} elements: not sharded"
            got = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))

            if pretrained:
                base = AutoModelForCausalLM.from_pretrained(model_dir)
            else:
                cfg = dict(TINY_LLAMA)
                base = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
                init_weights(base, SEED)
            want = LoRA(**spec).apply(base, Context(config={"seed": SEED})).state_dict()
            assert set(got) == set(want), set(got) ^ set(want)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{name}: {k}")
            assert any(float(v.abs().max()) > 0 for k, v in got.items() if "lora_A" in k)
            if rank == 0:
                print(f"ok {name} {'pretrained' if pretrained else 'random'}", flush=True)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        main(Path(sys.argv[1]))
        dist.barrier()  # nobody tears gloo down while a peer is still on its last collective
    finally:
        dist.destroy_process_group()
    exit_without_teardown()
