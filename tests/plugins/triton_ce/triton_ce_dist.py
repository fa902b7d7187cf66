"""Run by torchrun (2 ranks, gloo) from test_distributed.py: the fused loss on DTensor weights.

* FSDP2 semantics: the lm_head weight is ``Shard(0)`` on a ``dp_shard`` mesh, each rank has its own
  tokens; the loss is scaled by dp_size before backward (as the loop does). The sharded weight
  gradient must equal the single-process gradient of the global mean.
* TP vocab-parallel: the weight is ``Shard(0)`` on a ``tp`` mesh (vocab 101: uneven shards); hidden
  states replicated (plain tensor, or a Replicate DTensor). Loss and both gradients must equal the
  unsharded computation, and no rank may hold the full weight.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from automodel.testing import exit_without_teardown
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard

sys.path.insert(0, os.path.dirname(__file__))
from triton_ce_reference import torch_ce  # noqa: E402


def close(a, b, what):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"rank {dist.get_rank()} {what}: {m}")


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from automodel_triton_ce.loss import ChunkedCrossEntropy, FusedLinearCrossEntropy

    g = torch.Generator().manual_seed(0)
    V, D, T = 101, 16, 24
    w_full = torch.randn(V, D, generator=g)
    h_all = torch.randn(world, T, D, generator=g)
    y_all = torch.randint(0, V, (world, T), generator=g)
    y_all[:, ::4] = -100
    n = (y_all != -100).sum().float()

    for cls in (FusedLinearCrossEntropy, ChunkedCrossEntropy):
        loss_fn = cls(chunk_size=8)
        # reference: everything in one process
        hr = h_all.clone().requires_grad_(True)
        wr = w_full.clone().requires_grad_(True)
        torch_ce(hr, wr, y_all, n).backward()

        # ---- FSDP2-style: weight sharded on dp_shard, data split over ranks
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp_shard",))
        w = DTensor.from_local(w_full.chunk(world)[rank].clone(), mesh, [Shard(0)], run_check=False,
                               shape=w_full.shape, stride=w_full.stride()).detach().requires_grad_(True)
        h = h_all[rank].clone().requires_grad_(True)
        loss = loss_fn(labels=y_all[rank], num_label_tokens=n, hidden_states=h, lm_head_weight=w)
        (loss * world).backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        close(total, torch_ce(h_all, w_full, y_all, n), f"{cls.__name__} fsdp loss")
        assert isinstance(w.grad, DTensor) and w.grad.placements == (Shard(0),)
        close(w.grad.full_tensor(), wr.grad, f"{cls.__name__} fsdp dW")
        close(h.grad, hr.grad[rank] * world, f"{cls.__name__} fsdp dh")

        # ---- TP vocab-parallel: weight sharded over the vocabulary, hidden states replicated
        tp = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
        local = w_full.chunk(world)[rank].clone()
        w = DTensor.from_local(local, tp, [Shard(0)], run_check=False, shape=w_full.shape,
                               stride=w_full.stride()).detach().requires_grad_(True)
        for as_dtensor in (False, True):
            w.grad = None
            h = h_all.clone().requires_grad_(True)
            h_in = DTensor.from_local(h, tp, [Replicate()], run_check=False) if as_dtensor else h
            loss = loss_fn(labels=y_all, num_label_tokens=n, hidden_states=h_in, lm_head_weight=w)
            loss.backward()
            close(loss.detach(), torch_ce(h_all, w_full, y_all, n), f"{cls.__name__} tp loss")
            assert w.grad.placements == (Shard(0),) and w.grad.to_local().shape == local.shape
            close(w.grad.full_tensor(), wr.grad, f"{cls.__name__} tp dW")
            close(h.grad, hr.grad, f"{cls.__name__} tp dh (hidden DTensor={as_dtensor})")
    dist.barrier()
    if rank == 0:
        print("DIST OK", flush=True)
    dist.barrier()  # nobody tears gloo down while a peer is still on its last collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown()
