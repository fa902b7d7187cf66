"""Checks that need 2 processes, run under torchrun by test_fsdp2.py (one launch for all of them):

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_checks.py MODEL_DIR TIED_DIR CHECK...

Each check prints ``ok <name>`` on rank 0; any mismatch raises (non-zero exit).
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
from automodel_fsdp2.parallel import FSDP2, FSDP2Replicate
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

SEED = 1234


def ctx_for(mesh, meta_init: bool, parallel: list[dict] | None = None) -> Context:
    rank, world = dist.get_rank(), dist.get_world_size()
    return Context(rank=rank, world_size=world, device=torch.device("cpu"), mesh=mesh, meta_init=meta_init,
                   config={"seed": SEED, "parallel": parallel or [{"name": "fsdp2"}]}, dp_rank=rank, dp_size=world)


def full_state(model) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def check_equal(got: dict, want: dict, what: str, atol: float = 0.0) -> None:
    assert set(got) == set(want), f"{what}: keys differ: {set(got) ^ set(want)}"
    for k in want:
        g, w = got[k].float(), want[k].float()
        assert g.shape == w.shape, f"{what}: {k} shape {g.shape} vs {w.shape}"
        err = (g - w).abs().max().item()
        assert err <= atol, f"{what}: {k} differs by {err} (tolerance {atol})"


def sharded(model_dir: Path, fsdp: FSDP2, mesh, parallel=None, **loader):
    ctx = ctx_for(mesh, fsdp.meta_init, parallel)
    model, _ = hf(ctx, pretrained=str(model_dir), **loader) if "config" not in loader else hf(ctx, **loader)
    if fsdp.meta_init:
        assert all(p.is_meta for p in model.parameters()), "the hf loader did not build on meta"
    model = fsdp.apply(model, mesh, ctx)
    materialize(model, ctx)
    assert not any(p.is_meta for p in model.parameters())
    return model


# -- checks ------------------------------------------------------------------------------------------


def meta_load(model_dir: Path, tied_dir: Path) -> None:
    """Meta init + per-rank shard loading gives exactly the pretrained weights (untied and tied)."""
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",))
    for d in (model_dir, tied_dir):
        model = sharded(d, FSDP2(), mesh)
        local = [p.to_local().numel() for p in model.parameters()]
        total = sum(p.numel() for p in model.parameters())
        assert sum(local) <= total // 2 + 64 * 8, f"rank holds {sum(local)} of {total} elements: not sharded"
        want = load_file(str(next(d.glob("*.safetensors"))))
        got = full_state(model)
        if "lm_head.weight" not in want:  # tied: the head is the embedding
            want["lm_head.weight"] = want["model.embed_tokens.weight"]
        check_equal(got, want, f"meta load {d.name}")
        # bf16 parameters from fp32 files: converted on read
        model = sharded(d, FSDP2(), mesh, dtype="bfloat16")
        got = full_state(model)
        assert all(v.dtype == torch.bfloat16 for v in got.values())
        check_equal(got, {k: v.to(torch.bfloat16) for k, v in want.items()}, f"meta load bf16 {d.name}")


def meta_random(model_dir: Path, tied_dir: Path) -> None:
    """Meta init without pretrained weights == the same init on an unsharded model (not one value per shard)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",))
    spec = dict(TINY_LLAMA)
    model = sharded(model_dir, FSDP2(), mesh, config=dict(spec), tokenizer=str(model_dir))
    got = full_state(model)
    ref = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    init_weights(ref, SEED)
    check_equal(got, ref.state_dict(), "random init")
    w = got["model.layers.0.mlp.up_proj.weight"]
    assert 0.01 < w.std().item() < 0.03, w.std()  # initializer_range 0.02
    assert torch.equal(got["model.norm.weight"], torch.ones_like(got["model.norm.weight"]))


def _batch(n: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 48, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, labels


def _loss(model, ids, labels, total_tokens, hidden: bool = False):
    if hidden:  # as the loop does for fused losses: decoder output + lm_head weight read after forward
        seen = []
        handle = model.get_decoder().register_forward_hook(lambda m, a, out: seen.append(out.last_hidden_state))
        model(input_ids=ids, use_cache=False, logits_to_keep=torch.empty(0, dtype=torch.long))
        handle.remove()
        logits = (seen[0] @ model.get_output_embeddings().weight.T).float()
    else:
        logits = model(input_ids=ids, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum") / total_tokens


def grads_match(model_dir: Path, fsdp: FSDP2, mesh, what: str, atol: float, parallel=None, tp: bool = False, accum: bool = False,
                hidden: bool = False) -> None:
    """One forward/backward on half the batch per data-parallel rank (loss scaled as the loop does)
    gives the same loss and full gradients as the whole batch on an unsharded model."""
    from transformers import AutoModelForCausalLM

    ids, labels = _batch()
    tokens = (labels != -100).sum()
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ref_loss = _loss(ref, ids, labels, tokens)
    ref_loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters()}

    ctx = ctx_for(mesh, fsdp.meta_init, parallel)
    model, _ = hf(ctx, pretrained=str(model_dir))
    if tp:
        model = _tensor_parallel(model, mesh)
    dp = 1
    for dim in ("dp_replicate", "dp_shard"):
        if dim in mesh.mesh_dim_names:
            dp *= mesh[dim].size()
    dp_rank = dist.get_rank() * dp // dist.get_world_size()
    model = fsdp.apply(model, mesh, ctx)
    if "dp_replicate" in mesh.mesh_dim_names:
        model = FSDP2Replicate(size=mesh["dp_replicate"].size()).apply(model, mesh, ctx)
    materialize(model, ctx)
    rows = ids.shape[0] // dp
    mine = slice(dp_rank * rows, (dp_rank + 1) * rows)
    micro = [slice(mine.start, mine.start + rows // 2), slice(mine.start + rows // 2, mine.stop)] if accum else [mine]
    total = torch.zeros(())
    for i, part in enumerate(micro):
        fsdp.grad_sync(model, i == len(micro) - 1)  # the plugin's declared member, as the loop calls it
        loss = _loss(model, ids[part], labels[part], tokens, hidden)
        (loss * dp).backward()
        total += loss.detach()
        if i < len(micro) - 1:  # before the last micro-batch: sharded gradients exist only if reduced every micro-batch
            reduced = [p.grad is not None for p in model.parameters()]
            assert all(reduced) if fsdp.reduce_every_micro_batch else not any(reduced), f"{what}: {sum(reduced)} reduced"
    dist.all_reduce(total)
    total /= dist.get_world_size() // dp
    assert abs(total.item() - ref_loss.item()) <= max(atol, 1e-5), f"{what}: loss {total.item()} vs {ref_loss.item()}"
    got = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    check_equal(got, want, f"{what} gradients", atol)


def _tensor_parallel(model, mesh):
    """A stand-in for the tp plugin (applied before FSDP, as the loop does): Megatron-style plan."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {}
    for i in range(len(model.model.layers)):
        p = f"model.layers.{i}."
        plan.update({p + "self_attn.q_proj": ColwiseParallel(), p + "self_attn.k_proj": ColwiseParallel(),
                     p + "self_attn.v_proj": ColwiseParallel(), p + "self_attn.o_proj": RowwiseParallel(),
                     p + "mlp.gate_proj": ColwiseParallel(), p + "mlp.up_proj": ColwiseParallel(),
                     p + "mlp.down_proj": RowwiseParallel()})
    return parallelize_module(model, mesh["tp"], plan)


def training(model_dir: Path, tied_dir: Path) -> None:
    fsdp_mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",))
    grads_match(model_dir, FSDP2(), fsdp_mesh, "fsdp2", 1e-6)
    grads_match(model_dir, FSDP2(), fsdp_mesh, "fsdp2 grad accumulation", 1e-6, accum=True)
    grads_match(model_dir, FSDP2(reduce_every_micro_batch=True), fsdp_mesh, "fsdp2 grad accumulation, reduced every micro-batch",
                1e-6, accum=True)
    grads_match(model_dir, FSDP2(), fsdp_mesh, "fsdp2 hidden states + lm_head weight", 1e-6, accum=True, hidden=True)
    grads_match(model_dir, FSDP2(reshard_after_forward=False, activation_checkpointing=True), fsdp_mesh, "fsdp2 checkpointing", 1e-6)
    grads_match(model_dir, FSDP2(cpu_offload=True), fsdp_mesh, "fsdp2 cpu offload", 1e-6)
    grads_match(model_dir, FSDP2(meta_init=False), fsdp_mesh, "fsdp2 without meta init", 1e-6)
    grads_match(model_dir, FSDP2(param_dtype="bfloat16", reduce_dtype="float32"), fsdp_mesh, "fsdp2 bf16", 3e-2)
    hsdp = init_device_mesh("cpu", (2, 1), mesh_dim_names=("dp_replicate", "dp_shard"))
    grads_match(model_dir, FSDP2(), hsdp, "hsdp", 1e-6, parallel=[{"name": "fsdp2_replicate", "size": 2}, {"name": "fsdp2"}])
    tp = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp_shard", "tp"))
    grads_match(model_dir, FSDP2(), tp, "tp + fsdp2", 1e-5, tp=True)


CHECKS = {"meta_load": meta_load, "meta_random": meta_random, "training": training}


def main() -> None:
    dist.init_process_group("gloo")
    model_dir, tied_dir, *names = sys.argv[1:]
    try:
        for name in names or CHECKS:
            CHECKS[name](Path(model_dir), Path(tied_dir))
            if dist.get_rank() == 0:
                print(f"ok {name}", flush=True)
        dist.barrier()  # nobody tears gloo down while a peer is still on its last collective
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown()
