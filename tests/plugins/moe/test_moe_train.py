"""automodel-moe on CPU: a tiny Mixtral built from model.config trains through `automodel run`; with ep=2
(2 gloo processes) and ep=2 x dp_shard=2 (4 processes) it matches the 1-process run step by step (loss,
grad norm, load-balancing loss, routing statistics); checkpoints move between ep=2 and ep=1 both ways; the
HF export loads in transformers. Every distributed run is launched once and shared by the assertions."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from automodel.testing import VOCAB_SIZE, make_config, read_metrics, run_cli, tiny_model

MIXTRAL = {"model_type": "mixtral", "vocab_size": VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "num_local_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2, "pad_token_id": 0}
STEPS = 4
MOE = [{"name": "moe", "aux_loss_weight": 0.01}]
LORA = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "allow_random_base": True}


def _sched(local: int) -> dict:
    return {"global_batch_size": 8, "local_batch_size": local, "max_steps": STEPS, "log_every_steps": 1, "ckpt_every_steps": 2}


def _ep(nproc: int) -> dict:
    return {"parallel": [{"name": "ep", "size": 2}, {"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": nproc}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("moe")


@pytest.fixture(scope="module")
def tokenizer(root: Path) -> Path:
    return tiny_model(root)  # its char tokenizer; the model is built from MIXTRAL


def _run(root: Path, name: str, tokenizer: Path, *flags: str, local: int = 8, checkpoint: dict | None = None,
         check: bool = True, transforms: list | None = None, **sections: object) -> tuple[Path, str, int]:
    cfg = make_config(root / name, None, model={"name": "hf", "config": MIXTRAL, "tokenizer": str(tokenizer)},
                      step_scheduler=_sched(local), transforms=transforms or MOE,
                      checkpoint={"export_hf": True, "save_final": False, **(checkpoint or {})}, **sections)
    proc = run_cli("run", cfg, *flags, cwd=root, check=check)
    return root / name / "run", proc.stdout + proc.stderr, proc.returncode


@pytest.fixture(scope="module")
def single(root: Path, tokenizer: Path) -> tuple[Path, str]:
    run, out, _ = _run(root, "single", tokenizer)
    return run, out


@pytest.fixture(scope="module")
def ep2(root: Path, tokenizer: Path) -> tuple[Path, str]:
    run, out, _ = _run(root, "ep2", tokenizer, local=4, **_ep(2))
    return run, out


def _same_steps(got: list[dict], want: list[dict], steps: list[int]) -> None:
    by_step = {m["step"]: m for m in got}
    ref = {m["step"]: m for m in want}
    assert sorted(by_step) == steps, sorted(by_step)
    for s in steps:
        a, b = by_step[s], ref[s]
        assert a["label_tokens"] == b["label_tokens"]
        for key in ("loss", "grad_norm", "moe_aux_loss", "moe_tokens_per_expert_min", "moe_tokens_per_expert_max"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (s, key, a[key], b[key])
        assert a["moe_dropped_tokens"] == b["moe_dropped_tokens"] == 0


# -- in process: families, refusals, the load-balancing gradient ---------------------------------------

BASE = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64}
FAMILIES = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                  "shared_expert_intermediate_size": 24, "decoder_sparse_step": 1},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "head_dim": 8},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3": {"n_routed_experts": 4, "num_key_value_heads": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                    "n_shared_experts": 1, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1, "kv_lora_rank": 16,
                    "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
}


def _model(model_type: str, **extra: object) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**BASE, **extra}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.2)  # routers start at zero in some families: make routing non-trivial
    return model


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_experts_and_router_found_and_dispatch_matches_transformers(model_type: str) -> None:
    from automodel_moe.experts import EPState, ep_forward, find_moe_layers

    model = _model(model_type, **FAMILIES[model_type])
    layers = find_moe_layers(model)
    assert len(layers) == 2 and all(layer.router is not None and layer.num_experts == 4 for layer in layers)
    ids = torch.randint(0, 64, (2, 9))
    want = model(ids).logits
    for layer in layers:  # the plugin's dispatch/combine (one rank) instead of transformers' experts forward
        layer.experts._automodel_ep = EPState(None, 1, 0, layer.num_experts)
        layer.experts.forward = types.MethodType(ep_forward, layer.experts)
    torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-6)


def test_unsupported_families_are_named_with_the_reason() -> None:
    from automodel.errors import AutomodelError
    from automodel_moe.experts import find_moe_layers

    with pytest.raises(AutomodelError, match=r"gpt_oss.*gate_up_proj_bias.*tested: mixtral"):
        find_moe_layers(_model("gpt_oss", num_local_experts=4, num_experts_per_tok=2, head_dim=8))
    with pytest.raises(AutomodelError, match=r"'llama' .* has no Mixture-of-Experts layers"):
        find_moe_layers(_model("llama"))


def test_load_balancing_gradient_and_router_freezing() -> None:
    """The aux gradient the router hook injects equals the gradient of w * sum over layers of
    E * sum_e f_e * P_e written out by hand; freeze_router leaves the routers without gradients."""
    from automodel.context import Context
    from automodel_moe.transform import MoE

    w = 0.5
    ctx = Context(device="cpu", config={"step_scheduler": {"global_batch_size": 2, "local_batch_size": 2}})
    ids = torch.randint(0, 64, (2, 9))

    hooked = _model("mixtral", **FAMILIES["mixtral"])
    moe = MoE(aux_loss_weight=w)
    moe.apply(hooked, ctx)
    hooked(ids).logits.sum().backward()
    got = [layer.router.weight.grad.clone() for layer in moe.layers]
    stats = moe.metrics()

    plain = _model("mixtral", **FAMILIES["mixtral"])
    out = plain(ids, output_router_logits=True)
    aux = torch.zeros(())
    for logits in out.router_logits:
        probs = torch.softmax(logits.float(), -1)
        f = torch.nn.functional.one_hot(probs.topk(2, -1).indices, 4).sum((0, 1)).float() / (probs.shape[0] * 2)
        aux = aux + 4 * (f * probs.mean(0)).sum()
    (out.logits.sum() + w * aux).backward()
    want = [m.mlp.gate.weight.grad for m in plain.model.layers]
    for g, wt in zip(got, want):
        torch.testing.assert_close(g, wt, rtol=1e-5, atol=1e-6)
    assert stats["moe_aux_loss"] == pytest.approx(aux.item(), rel=1e-5)
    assert stats["moe_tokens_per_expert_max"] >= 1.0 >= stats["moe_tokens_per_expert_min"]

    frozen = _model("mixtral", **FAMILIES["mixtral"])
    moe = MoE(aux_loss_weight=w, freeze_router=True)
    moe.apply(frozen, ctx)
    frozen(ids).logits.sum().backward()
    assert all(layer.router.weight.grad is None and not layer.router.weight.requires_grad for layer in moe.layers)
    assert all(layer.experts.gate_up_proj.grad is not None for layer in moe.layers)


def test_impossible_layouts_are_refused_before_launch(root: Path, tokenizer: Path) -> None:
    _, out, rc = _run(root, "no_fsdp2", tokenizer, check=False, parallel=[{"name": "ep", "size": 2}],
                      launcher={"name": "local", "nproc_per_node": 2})
    assert rc == 2 and "needs fsdp2" in out and "add {name: fsdp2}" in out and "process(es)" not in out, out
    _, out, rc = _run(root, "indivisible", tokenizer, check=False, **{**_ep(3), "parallel": [{"name": "ep", "size": 3}, {"name": "fsdp2"}]})
    assert rc == 2 and "number of experts (4) divisible by 3" in out and "process(es)" not in out, out


def _dispatch_worker(rank: int, port: int, out: object) -> None:
    import os

    import torch.distributed as dist
    from automodel_moe.experts import EPState, ep_forward

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        experts = _model("mixtral", **FAMILIES["mixtral"]).model.layers[0].mlp.experts  # same weights on both ranks
        torch.manual_seed(1)
        x = torch.randn(12, 32)
        index = torch.tensor([[0, 1], [1, 0]] * 6)  # every token to experts 0 and 1: rank 1's experts get none
        weights = torch.rand(12, 2)
        ref_x = x.clone().requires_grad_()
        experts(ref_x, index, weights).pow(2).sum().backward()
        mine = slice(6 * rank, 6 * rank + 6)
        local_x = x[mine].clone().requires_grad_()
        full = {n: getattr(experts, n).grad.clone() for n in ("gate_up_proj", "down_proj")}
        for n in full:
            setattr(experts, n, torch.nn.Parameter(getattr(experts, n).data[2 * rank: 2 * rank + 2].clone()))
        experts._automodel_ep = EPState(dist.group.WORLD, 2, rank, 4)
        y = ep_forward(experts, local_x, index[mine], weights[mine])
        y.pow(2).sum().backward()  # a rank without tokens must still run both backward all-to-alls
        torch.testing.assert_close(local_x.grad, ref_x.grad[mine])
        for n, g in full.items():
            torch.testing.assert_close(getattr(experts, n).grad, g[2 * rank: 2 * rank + 2], rtol=1e-5, atol=1e-6)
        out.put((rank, "ok"))
    except BaseException as e:  # noqa: BLE001
        out.put((rank, repr(e)))
    finally:
        dist.destroy_process_group()


def test_all_to_all_dispatch_with_idle_experts_on_two_ranks() -> None:
    """Two gloo processes, every token routed to rank 0's experts: outputs, input gradients and the
    sharded expert gradients equal transformers' single-process experts; rank 1 (no tokens) does not hang."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_dispatch_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung in the all-to-all"
    results = dict(out.get(timeout=5) for _ in procs)
    assert results == {0: "ok", 1: "ok"}, results


def test_layout_rules() -> None:
    from automodel_moe.parallel import ExpertParallel

    def problems(*names: str) -> list[str]:
        return [m for _, m, _ in ExpertParallel.validate_args({"size": 2}, {"parallel": [{"name": n} for n in names]})]

    assert problems("ep", "fsdp2") == []
    assert any("needs fsdp2" in m for m in problems("ep"))
    for other in ("tp", "cp", "fsdp2_replicate"):
        assert problems("ep", "fsdp2", other) == [f"ep with {other} is not supported"]
    from automodel.architecture import call_validate_model
    from automodel.plugins import load_plugins

    plugins = load_plugins()  # the architecture comes from what the hf loader declares (its model_config)

    def check(size: int, config: dict) -> list:
        return call_validate_model(ExpertParallel(size=size).validate_model, {"name": "hf", "config": config}, plugins)

    assert check(2, MIXTRAL) == []
    (msg, hint), = check(8, {**MIXTRAL, "num_local_experts": 12})
    assert "number of experts (12) divisible by 8" in msg and "[1, 2, 3, 4, 6, 12]" in hint
    (msg, _), = check(2, {"model_type": "llama"})
    assert "names no number of experts" in msg
    assert check(8, None) == []  # a hub id: nothing known before launch


# -- distributed: one launch each, shared --------------------------------------------------------------


def test_single_process_trains_with_routing_metrics(single: tuple[Path, str]) -> None:
    run, out = single
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert "moe: 2 MoE layers x 4 experts; load-balancing loss weight 0.01" in out
    for m in metrics:
        assert m["moe_aux_loss_weight"] == 0.01 and m["moe_aux_loss"] >= 2 * 1.0 - 1e-6  # >= 1 per layer (balanced)
        assert 0 < m["moe_tokens_per_expert_min"] <= 1 <= m["moe_tokens_per_expert_max"]
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_ep2_matches_one_process(single: tuple[Path, str], ep2: tuple[Path, str]) -> None:
    run, out = ep2
    assert "mesh dp_shard=1 x ep=2" in out and "ep: 2 MoE layers, 4 experts each, 2 per rank over 2 ranks" in out
    assert "fsdp2: 2 blocks + root sharded over {'dp_shard_ep': 2}" in out
    _same_steps(read_metrics(run), read_metrics(single[0]), list(range(1, STEPS + 1)))


def test_ep2_export_loads_in_transformers_with_the_trained_weights(ep2: tuple[Path, str], single: tuple[Path, str]) -> None:
    """The ep=2 export (written shard by shard: fused 3-D expert tensors) and the 1-process one
    (save_pretrained: transformers writes Mixtral's per-expert w1/w2/w3 layout) load into the same weights."""
    from transformers import AutoModelForCausalLM

    assert json.loads((ep2[0] / "hf" / "config.json").read_text())["model_type"] == "mixtral"
    got, want = (AutoModelForCausalLM.from_pretrained(str(r / "hf")).eval() for r in (ep2[0], single[0]))
    assert got.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 64, 32)
    want_sd = want.state_dict()
    for k, v in got.state_dict().items():
        torch.testing.assert_close(v, want_sd[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    ids = torch.randint(3, VOCAB_SIZE, (1, 12))
    torch.testing.assert_close(got(ids).logits, want(ids).logits, rtol=1e-4, atol=1e-4)


def test_ep2_checkpoint_resumes_on_one_process(root: Path, tokenizer: Path, single: tuple[Path, str], ep2: tuple[Path, str]) -> None:
    step2 = ep2[0] / "checkpoints" / "step_2"
    assert step2.is_dir()
    run, out, _ = _run(root, "resume1", tokenizer, "--allow-config-change",
                       checkpoint={"resume": str(step2), "export_hf": False})
    assert "resumed from step 2" in out
    _same_steps(read_metrics(run), read_metrics(single[0]), [3, 4])


def test_one_process_checkpoint_resumes_at_ep2_x_dp2(root: Path, tokenizer: Path, single: tuple[Path, str]) -> None:
    step2 = single[0] / "checkpoints" / "step_2"
    run, out, _ = _run(root, "resume_ep2dp2", tokenizer, "--allow-config-change", local=2,
                       checkpoint={"resume": str(step2), "export_hf": False}, **_ep(4))
    assert "mesh dp_shard=2 x ep=2" in out and "resumed from step 2" in out
    _same_steps(read_metrics(run), read_metrics(single[0]), [3, 4])


def test_lora_on_attention_composes_with_ep2(root: Path, tokenizer: Path, single: tuple[Path, str]) -> None:
    """LoRA adapters on attention, experts frozen and sharded over ep=2: the first step (same initial
    weights and data) has the 1-process run's loss and routing; the adapter is what gets exported."""
    run, out, _ = _run(root, "lora_ep2", tokenizer, local=4, transforms=[LORA, *MOE], checkpoint={"save_final": False},
                       **_ep(2))
    assert "ep: 2 MoE layers" in out and "lora: LoRA r=4" in out
    got, want = read_metrics(run), read_metrics(single[0])
    assert len(got) == STEPS and all(m["loss"] == m["loss"] for m in got)
    for key in ("loss", "moe_aux_loss", "moe_tokens_per_expert_max"):
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-5), key
    assert got[-1]["loss"] != pytest.approx(got[0]["loss"], rel=1e-6)  # the adapters train
    assert (run / "hf" / "adapter_config.json").is_file()
