"""Optimizers and schedules, in process: parameter groups (weight decay, lr multipliers, LoRA, printing),
muon as one optimizer, every optimizer's state through DCP's get/set_state_dict (exact continuation), the
bitsandbytes error, WSD and min_lr, value checks, and `automodel lr-curve`.

Runs through the CLI (kill -9 + resume per optimizer, fsdp2, profiling) are in test_optim_runs.py."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from automodel.builtin import optim
from automodel.testing import TINY_LLAMA, make_config, run_cli
from automodel.train import NamedParameters


def tiny(**overrides) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    spec = {**TINY_LLAMA, **overrides}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))


def by_label(opt: torch.optim.Optimizer) -> dict[str, set[int]]:
    return {g["group"]: {id(p) for p in g["params"]} for g in opt.param_groups}


def test_weight_decay_skips_biases_norms_and_embeddings_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny(attention_bias=True)
    params = NamedParameters.of(model)
    opt = optim.adamw(params, lr=1e-3, weight_decay=0.1)
    named = dict(model.named_parameters())
    groups = {g["group"]: g for g in opt.param_groups}
    assert set(groups) == {"decay", "no_decay"} and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {n for n, p in named.items() if id(p) in {id(q) for q in groups["no_decay"]["params"]}}
    assert "model.embed_tokens.weight" in no_decay and "model.norm.weight" in no_decay
    assert "model.layers.0.self_attn.q_proj.bias" in no_decay and "model.layers.1.input_layernorm.weight" in no_decay
    assert "lm_head.weight" not in no_decay and "model.layers.0.mlp.up_proj.weight" not in no_decay
    assert all(named[n].ndim < 2 or "embed" in n for n in no_decay)
    # every trainable parameter exactly once
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    out = capsys.readouterr().out
    assert "optimizer adamw: 2 parameter groups" in out and "weight_decay 0.1" in out and "layers.*." in out

    # the embeddings decay when asked; extra no_decay patterns; weight_decay 0 makes one group
    opt = optim.adamw(NamedParameters.of(model), weight_decay=0.1, decay_embeddings=True, no_decay=[r"lm_head"])
    groups = {g["group"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert id(named["model.embed_tokens.weight"]) in groups["decay"] and id(named["lm_head.weight"]) in groups["no_decay"]
    assert [g["group"] for g in optim.adamw(NamedParameters.of(model), weight_decay=0.0).param_groups] == ["no_decay"]


def test_lr_multipliers_and_lora_only_trainable_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    params = NamedParameters.of(model)
    assert all("lora_" in n for n in params.names) and len(params) == 8  # frozen base weights never grouped
    opt = optim.adamw(params, lr=1e-3, weight_decay=0.01, lr_multipliers={"lora_B": 4.0})
    lrs = {g["group"]: (g["lr"], len(g["params"])) for g in opt.param_groups}
    assert lrs == {"decay": (1e-3, 4), "decay+lr x4 (lora_B)": (4e-3, 4)}
    out = capsys.readouterr().out
    assert "decay+lr x4 (lora_B)" in out and "lora_B.default.weight" in out and "8 tensors" in out

    # a scheduler scales every group alike: the multiplier stays
    sched = optim.cosine(opt, total_steps=10, warmup_steps=2)
    opt.step()
    sched.step()
    a, b = (g["lr"] for g in opt.param_groups)
    assert math.isclose(b / a, 4.0)


def test_plain_parameter_lists_still_work() -> None:
    """A caller that passes a plain list (no names) gets shape-based groups; torch's own optimizer contract holds."""
    model = tiny()
    opt = optim.adamw(list(model.parameters()), weight_decay=0.1)
    assert {g["group"] for g in opt.param_groups} == {"decay", "no_decay"}
    assert all(p.ndim == 1 for g in opt.param_groups if g["group"] == "no_decay" for p in g["params"])


def test_muon_is_one_optimizer_over_hidden_matrices_and_adamw_for_the_rest() -> None:
    model = tiny()
    named = dict(model.named_parameters())
    opt = optim.muon(NamedParameters.of(model), lr=1e-3, weight_decay=0.1, adamw_lr=5e-4)
    assert type(opt).__name__ == "MuonAdamW" and isinstance(opt, torch.optim.Optimizer)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert {n for n, p in named.items() if id(p) in muon_ids} == {n for n, p in named.items() if p.ndim == 2 and "layers" in n}
    assert all(g["lr"] == 5e-4 for g in opt.param_groups if not g["use_muon"])
    before = {n: p.detach().clone() for n, p in named.items()}
    model(torch.randint(0, 30, (2, 12)), labels=torch.randint(0, 30, (2, 12))).loss.backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in named.items())
    # the schedulers see one optimizer: the lr of both kinds of groups follows
    sched = optim.linear(opt, total_steps=4)
    sched.step()
    assert all(math.isclose(g["lr"], g["initial_lr"] * 0.75) for g in opt.param_groups)


OPTIMIZERS = {
    "adamw": {"weight_decay": 0.1},
    "muon": {"lr": 1e-3, "weight_decay": 0.1},
    "adafactor": {"weight_decay": 0.01},
    "adamw_8bit": {"weight_decay": 0.1, "min_8bit_size": 16},  # small enough that the tiny matrices get 8-bit state
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_round_trips_through_dcp_state_dicts_exactly(name: str) -> None:
    """What the checkpointer does (get_state_dict -> set_state_dict on a fresh model and optimizer): the
    continued runs are bit-identical."""
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes", reason="adamw_8bit's optional dependency (pip install bitsandbytes)")
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ids = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(0))
    factory = getattr(optim, name)

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    a = tiny()
    opt_a = factory(NamedParameters.of(a), **OPTIMIZERS[name])
    for _ in range(2):
        step(a, opt_a)
    model_sd, optim_sd = (copy.deepcopy(sd) for sd in get_state_dict(a, opt_a))
    if name == "adamw_8bit":
        assert any(v.dtype == torch.uint8 for s in opt_a.state.values() for v in s.values() if torch.is_tensor(v))
    b = tiny()
    opt_b = factory(NamedParameters.of(b), **OPTIMIZERS[name])
    set_state_dict(b, opt_b, model_state_dict=model_sd, optim_state_dict=optim_sd)
    for _ in range(2):
        step(a, opt_a)
        step(b, opt_b)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_adamw_8bit_without_bitsandbytes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> None:
    from automodel import config as config_mod
    from automodel.errors import AutomodelError, ConfigError
    from automodel.plugins import load_plugins

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    raw = config_mod.load(make_config(tmp_path, tiny_model_dir, optimizer={"name": "adamw_8bit", "lr": 1e-4}))
    with pytest.raises(ConfigError) as e:
        config_mod.validate(raw, load_plugins())
    assert "optimizer.name" in str(e.value) and "pip install bitsandbytes" in str(e.value)
    with pytest.raises(AutomodelError, match="pip install bitsandbytes"):
        optim.adamw_8bit([torch.nn.Parameter(torch.ones(2))])


def test_wsd_warms_up_holds_then_decays_to_min_lr() -> None:
    lrs = optim.lr_curve(optim.wsd, {"warmup_steps": 10, "decay_ratio": 0.2, "min_lr": 1e-5}, 1e-3, 110)
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # warmup
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10:90])  # stable: 80% of the 100 steps after warmup
    decay = lrs[90:]
    assert len(decay) == 20 and all(x > y for x, y in zip([1e-3, *decay], decay)) and decay[-1] == pytest.approx(1e-5)
    for kind in ("cosine", "sqrt"):
        curve = optim.lr_curve(optim.wsd, {"decay_steps": 5, "decay_type": kind, "min_lr_ratio": 0.1}, 1.0, 20)
        assert curve[:15] == [1.0] * 15 and 0.1 == pytest.approx(curve[-1]) and curve[-1] < curve[15] < 1.0
    # 1-sqrt drops fastest at first, cosine slowest
    sqrt_curve = optim.lr_curve(optim.wsd, {"decay_steps": 10, "decay_type": "sqrt"}, 1.0, 20)
    cos_curve = optim.lr_curve(optim.wsd, {"decay_steps": 10, "decay_type": "cosine"}, 1.0, 20)
    assert sqrt_curve[11] < cos_curve[11]


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd"])
def test_min_lr_is_the_floor_of_every_decaying_schedule(name: str) -> None:
    factory = getattr(optim, name)
    model = tiny()
    opt = optim.adamw(NamedParameters.of(model), lr=1e-3, lr_multipliers={"lm_head": 2.0})
    sched = factory(opt, total_steps=20, min_lr=1e-4)
    for _ in range(20):
        opt.step()
        sched.step()
    lrs = {g["group"]: g["lr"] for g in opt.param_groups}
    assert lrs["no_decay"] == pytest.approx(1e-4) and lrs["no_decay+lr x2 (lm_head)"] == pytest.approx(2e-4)


def test_value_checks(tiny_model_dir: Path, tmp_path: Path) -> None:
    from automodel import config as config_mod
    from automodel.errors import ConfigError
    from automodel.plugins import load_plugins

    raw = config_mod.load(make_config(
        tmp_path, tiny_model_dir,
        optimizer={"name": "muon", "lr": 1e-3, "lr_multipliers": {"lora_B": -1, "(": 2.0}, "adamw_betas": [0.9, 1.5]},
        lr_scheduler={"name": "wsd", "min_lr": 1e-5, "min_lr_ratio": 0.1, "decay_ratio": 2.0, "decay_type": "exp"},
        profile={"num_steps": 0},
    ))
    with pytest.raises(ConfigError) as e:
        config_mod.validate(raw, load_plugins())
    text = str(e.value)
    for expected in ("optimizer.lr_multipliers.lora_B", "optimizer.lr_multipliers.(", "optimizer.adamw_betas",
                     "lr_scheduler.decay_type", "profile.num_steps", "profile.start_step"):
        assert expected in text, expected
    raw = config_mod.load(make_config(tmp_path, tiny_model_dir, lr_scheduler={"name": "wsd", "min_lr": 1e-5, "min_lr_ratio": 0.1,
                                                                              "decay_ratio": 2.0}))
    with pytest.raises(ConfigError) as e:
        config_mod.validate(raw, load_plugins())
    assert "lr_scheduler.min_lr" in str(e.value) and "lr_scheduler.decay_ratio" in str(e.value)


def test_lr_curve_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, optimizer={"name": "adamw", "lr": 2e-3},
                      lr_scheduler={"name": "wsd", "warmup_steps": 10, "decay_ratio": 0.25, "min_lr": 1e-4})
    out = run_cli("lr-curve", cfg, "step_scheduler.max_steps=50").stdout
    assert "lr_scheduler wsd(warmup_steps=10, decay_ratio=0.25, min_lr=0.0001) over 50 steps, optimizer.lr 0.002" in out
    rows = {int(line.split()[0]): float(line.split()[1]) for line in out.splitlines()[2:]}
    assert rows[1] == pytest.approx(2e-4) and rows[10] == pytest.approx(2e-3) and rows[40] == pytest.approx(2e-3)
    assert rows[50] == pytest.approx(1e-4)  # decays to min_lr at the last step
    decaying = [rows[s] for s in sorted(rows) if s > 40]
    assert len(decaying) >= 3 and all(x > y for x, y in zip(decaying, decaying[1:]))
    proc = run_cli("lr-curve", cfg, "~step_scheduler.max_steps", check=False)
    assert proc.returncode == 2 and "--steps" in proc.stderr
