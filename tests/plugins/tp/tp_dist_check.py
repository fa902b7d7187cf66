"""Run under ``torch.distributed.run --nproc_per_node 2``: for each case, a model and its TP=2 copy take
one forward/backward with the builtin masked_ce loss; rank 0 writes the losses and the largest gradient
difference per parameter (sharded gradients gathered) as JSON to argv[1].

Cases: ``model_type,sequence_parallel,loss_parallel,tied,seq_len,padded,lora``.
"""

from __future__ import annotations

import copy
import json
import sys
import types

import torch
import torch.distributed as dist
from automodel.builtin.losses import MaskedCrossEntropy
from automodel.testing import exit_without_teardown
from automodel_tp.parallel import TensorParallel
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM


def run_case(mesh, model_type: str, sp: bool, lp: bool, tied: bool, seq: int, padded: bool, lora: bool) -> dict:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
    ref = AutoModelForCausalLM.from_config(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        ref = get_peft_model(ref, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)).base_model.model
    model = copy.deepcopy(ref)
    ctx = types.SimpleNamespace(is_main=False)
    model = TensorParallel(size=2, sequence_parallel=sp, loss_parallel=lp).apply(model, mesh, ctx)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 48, (2, seq), generator=gen)
    labels = torch.randint(0, 48, (2, seq), generator=gen)
    labels[0, :3] = -100
    batch = {"input_ids": ids}
    if padded:
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0
        labels[1, -3:] = -100
        batch["attention_mask"] = mask
    n = (labels != -100).sum().float()
    losses = []
    for m in (ref, model):
        logits = m(**batch, use_cache=False).logits
        loss = MaskedCrossEntropy()(labels=labels, num_label_tokens=n, logits=logits)
        loss.backward()
        losses.append(float(loss.detach()))
    diffs, trainable = {}, {}
    for (name, p), (name2, q) in zip(ref.named_parameters(), model.named_parameters()):
        assert name == name2, (name, name2)
        trainable[name] = [p.requires_grad, q.requires_grad]
        if p.grad is None or q.grad is None:
            diffs[name] = None if p.grad is None and q.grad is None else float("inf")
            continue
        g = q.grad.full_tensor() if isinstance(q.grad, DTensor) else q.grad
        diffs[name] = float((p.grad - g).abs().max())
    tie_kept = (not tied) or model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return {"losses": losses, "grad_diff": diffs, "trainable": trainable, "all_dtensor":
            all(isinstance(p, DTensor) for p in model.parameters()), "tie_kept": tie_kept}


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    results = {}
    for case in sys.argv[2:]:
        mt, sp, lp, tied, seq, padded, lora = case.split(",")
        results[case] = run_case(mesh, mt, sp == "1", lp == "1", tied == "1", int(seq), padded == "1", lora == "1")
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()  # nobody tears gloo down while a peer is still on its last collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown()
