"""automodel-fp8 on CPU: FP8 numerics of the torch backend against a high-precision reference, against
torch._scaled_mm and against torchao; the layer filter; training, export, meta-init, LoRA and FSDP2
composition; clear errors for bad input. Transformer Engine runs only on a lent GPU."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from automodel.context import Context
from automodel.errors import AutomodelError
from automodel.testing import make_config, read_metrics, run_cli, tiny_model
from automodel_fp8.linear import E4M3, E5M2, Float8Linear, float8_matmul, quantize
from automodel_fp8.transform import FP8, select_layers

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_TE = importlib.util.find_spec("transformer_engine") is not None
# Global batch 8 = 2 sequences x 4 micro-batches in one process, x 2 micro-batches x 2 ranks in two.
SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 8, "log_every_steps": 1}
CKPT = {"export_hf": True, "save_final": False}
OPT = {"name": "adamw", "lr": 3.0e-3}
FSDP2 = {"parallel": [{"name": "fsdp2"}], "launcher": {"name": "local", "nproc_per_node": 2}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model trained in float32, with fp8 (torch backend), and with fp8 under FSDP2 (2 processes)."""
    root = tmp_path_factory.mktemp("fp8")
    model = tiny_model(root)
    out: dict[str, Any] = {"model": model}
    variants = {"fp32": ([], {}), "fp8": ([{"name": "fp8", "backend": "torch"}], {}),
                "fsdp2": ([{"name": "fp8", "backend": "torch"}], FSDP2)}
    for name, (transforms, extra) in variants.items():
        cfg = make_config(root / name, model, transforms=transforms, optimizer=OPT, step_scheduler=SCHED,
                          checkpoint=CKPT, **extra)
        proc = run_cli("run", cfg, cwd=root)
        out[name] = root / name / "run"
        out[f"{name}_log"] = proc.stdout + proc.stderr
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _grads(fn: Any, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = fn(x, w)
    y.backward(g)
    return y.detach(), x.grad, w.grad


def _hf(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


# --------------------------------------------------------------------------------------------------
# Numerics of the torch backend
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_forward_backward_match_high_precision_within_fp8_tolerance(recipe: str, dtype: torch.dtype) -> None:
    """Output and both gradients of random matrices are within FP8's error of the float32 result:
    e4m3 (3 mantissa bits) ~4% relative, e5m2 gradients (2 bits) ~7%; and they are not exact (FP8 is
    really used)."""
    torch.manual_seed(0)
    x, w, g = torch.randn(37, 64, dtype=dtype), (0.1 * torch.randn(96, 64)).to(dtype), torch.randn(37, 96, dtype=dtype)
    grad_dtype = E5M2 if recipe == "tensorwise" else E4M3
    want = _grads(lambda a, b: a.float() @ b.float().t(), x, w, g.float())
    got = _grads(lambda a, b: float8_matmul(a, b, recipe == "rowwise", grad_dtype), x, w, g)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == dtype
    for name, a, b, tol in zip(("out", "grad_x", "grad_w"), got, want, (0.05, 0.08, 0.08)):
        assert 1e-3 < _rel(a, b) < tol, (name, _rel(a, b))


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_scaled_mm_kernel_equals_the_emulation(recipe: str) -> None:
    """torch._scaled_mm runs on CPU in torch 2.13 (a slow reference kernel): the FP8 path and the
    emulated path (dequantize, float32 matmul) give the same values in forward and backward, up to
    float32 summation order."""
    torch.manual_seed(1)
    x, w, g = torch.randn(24, 32), torch.randn(48, 32), torch.randn(24, 48)
    kernel = _grads(lambda a, b: float8_matmul(a, b, recipe == "rowwise", emulate=False), x, w, g)
    emulated = _grads(lambda a, b: float8_matmul(a, b, recipe == "rowwise", emulate=True), x, w, g)
    for a, b in zip(kernel, emulated):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32 summation order


def test_quantize_scales_to_the_fp8_range() -> None:
    t = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, inv = quantize(t, E4M3)
    assert q.dtype == E4M3 and float(q.float().abs().max()) == torch.finfo(E4M3).max  # amax -> 448
    torch.testing.assert_close(q.float() * inv, t)
    q, inv = quantize(t, E5M2, dim=-1)  # per row; an all-zero row has a finite scale and stays zero
    assert inv.shape == (2, 1) and torch.isfinite(inv).all() and float(q[1].float().abs().max()) == 0
    assert float(torch.log2(1 / inv[0])) == float(torch.log2(1 / inv[0])).__floor__()  # a power of 2


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_torch_backend_matches_torchao(tmp_path: Path, recipe: str) -> None:
    """The same model, batch and recipe: the torch backend's loss and every gradient equal torchao's
    Float8Linear (both emulated on CPU), so the two backends are interchangeable."""
    base = _hf(tiny_model(tmp_path))
    ids = torch.randint(4, 48, (4, 24), generator=torch.Generator().manual_seed(0))
    out = {}
    for backend in ("torch", "torchao"):
        model = FP8(backend=backend, recipe=recipe).apply(copy.deepcopy(base), Context())
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        out[backend] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
        assert {n for n, _ in model.named_parameters()} == {n for n, _ in base.named_parameters()}
    torch.testing.assert_close(out["torch"][0], out["torchao"][0], rtol=1e-5, atol=1e-6)
    for n, g in out["torchao"][1].items():
        torch.testing.assert_close(out["torch"][1][n], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


# --------------------------------------------------------------------------------------------------
# The layer filter
# --------------------------------------------------------------------------------------------------


def test_filter_skips_head_odd_sizes_and_excluded_layers(tmp_path: Path) -> None:
    """lm_head stays high precision; an MLP of width 40 (not a multiple of 16) too; exclude_modules
    as names or a regex; the converted layers are Float8Linear with unchanged weights."""
    model = _hf(tiny_model(tmp_path, intermediate_size=40))
    convert, skipped = select_layers(model)
    assert skipped["lm_head"] == "output head"
    assert skipped["model.layers.0.mlp.down_proj"] == "size 40x64 not divisible by 16"
    assert sorted({n.rsplit(".", 1)[-1] for n in convert}) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    convert, skipped = select_layers(model, ["o_proj"])
    assert skipped["model.layers.1.self_attn.o_proj"] == "exclude_modules" and len(convert) == 6
    convert, _ = select_layers(model, r"model\.layers\.0\..*")
    assert convert == [f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    transform = FP8(backend="torch")
    model = transform.apply(model, Context())
    assert isinstance(model.model.layers[0].self_attn.q_proj, Float8Linear)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear and type(model.lm_head) is torch.nn.Linear
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], v) for n, v in before.items())


def test_nothing_to_convert_is_an_error_listing_the_layers(tmp_path: Path) -> None:
    model = _hf(tiny_model(tmp_path))
    with pytest.raises(AutomodelError, match="no linear layer to convert") as e:
        FP8(backend="torch", exclude_modules=r".*_proj").apply(model, Context())
    assert "output head: 1 layer (lm_head)" in str(e.value)
    assert "exclude_modules: 14 layers (model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj, " in str(e.value)
    with pytest.raises(AutomodelError, match="'qkv_proj' matches no module"):
        FP8(backend="torch", exclude_modules=["qkv_proj"]).apply(model, Context())


# --------------------------------------------------------------------------------------------------
# Training, export
# --------------------------------------------------------------------------------------------------


def test_plugin_is_installed_and_listed() -> None:
    listing = json.loads(run_cli("plugins", "--json").stdout)
    entry = next(p for p in listing if p["name"] == "fp8")
    assert entry["distribution"] == "automodel-fp8" and entry["error"] is None
    assert entry["registers"]["model_transforms"] == ["fp8"]


def test_doctor_reports_a_backend_that_is_installed_but_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """``plugins --check``: nothing to report here; a torchao whose float8 module fails to import is reported."""
    from automodel_fp8 import check_requirements

    assert check_requirements() == []
    if HAS_TORCHAO:
        monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import now raises ImportError
        (problem,) = check_requirements()
        assert problem.startswith("torchao.float8 is installed but fails to import") and "automodel-fp8[torchao]" in problem


def test_fp8_training_tracks_the_fp32_run(runs: dict[str, Any]) -> None:
    """Same data, same init: the FP8 loss curve falls and stays within 0.02 of the float32 curve at
    every step, without being identical to it."""
    assert "fp8: torch backend, tensorwise scaling" in runs["fp8_log"] and "14 linear layers" in runs["fp8_log"]
    fp32, fp8 = ([m["loss"] for m in read_metrics(runs[n])] for n in ("fp32", "fp8"))
    assert len(fp8) == SCHED["max_steps"] and fp8[-1] < fp8[0] - 0.3, fp8
    diffs = [abs(a - b) for a, b in zip(fp8, fp32)]
    assert max(diffs) < 0.02, (fp8, fp32)
    assert max(diffs) > 0, "fp8 run identical to the fp32 run: FP8 was not used"


def test_export_is_plain_weights_that_transformers_loads(runs: dict[str, Any]) -> None:
    """The HF export after FP8 training has the original parameter names and dtypes and loads with
    AutoModelForCausalLM with no missing or unexpected keys."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(runs["fp8"] / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(type(m) is not Float8Linear for m in model.modules())
    trained, init = model.state_dict(), _hf(runs["model"]).state_dict()
    assert set(trained) == set(init) and all(trained[k].dtype == init[k].dtype for k in init)
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"], init["model.layers.0.self_attn.q_proj.weight"])


def test_fsdp2_two_processes_track_one(runs: dict[str, Any]) -> None:
    """fp8 + fsdp2 (gloo, 2 ranks, meta-init): the model stays on meta through the transform and the run
    tracks the one-process FP8 run. Not to float32 rounding: per-tensor activation scales depend on
    which sequences (and how much padding) share a micro-batch, which differs between the layouts."""
    pytest.importorskip("automodel_fsdp2")
    assert "fp8: torch backend" in runs["fsdp2_log"] and "; on the meta device" in runs["fsdp2_log"], runs["fsdp2_log"][-3000:]
    got, want = ([m["loss"] for m in read_metrics(runs[n])] for n in ("fsdp2", "fp8"))
    assert len(got) == len(want) == SCHED["max_steps"]
    assert max(abs(a - b) for a, b in zip(got, want)) < 0.01, (got, want)
    a, b, init = (_hf(p).state_dict() for p in (runs["fsdp2"] / "hf", runs["fp8"] / "hf", runs["model"]))
    for k in init:  # the two runs moved the weights the same way, up to FP8 noise
        assert (a[k] - b[k]).norm() < 0.5 * (b[k] - init[k]).norm(), k


def test_meta_model_stays_on_meta_and_loads_unchanged(tmp_path: Path) -> None:
    """On a meta-device model the transform converts without storage; the core's materialize then
    loads the pretrained weights by their unchanged names."""
    from accelerate import init_empty_weights
    from automodel.weights import materialize
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = tiny_model(tmp_path)
    with init_empty_weights(include_buffers=False):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    meta.config.name_or_path = str(model_dir)
    transform = FP8(backend="torch")
    ctx = Context(config={"seed": 3}, meta_init=True)
    model = transform.apply(meta, ctx)
    assert all(p.is_meta for p in model.parameters())
    assert isinstance(model.model.layers[1].mlp.down_proj, Float8Linear)
    materialize(model, ctx, [transform])
    want = _hf(model_dir).state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("order", ["lora_then_fp8", "fp8_then_lora"])
def test_lora_on_an_fp8_base(tmp_path: Path, order: str) -> None:
    """LoRA + FP8 in either order: the frozen base layers run in FP8, the adapters stay in high
    precision, only adapters get gradients, and the LoRA model's output stays within FP8 error."""
    from automodel_lora.transform import LoRA

    base = _hf(tiny_model(tmp_path))
    ids = torch.randint(4, 48, (2, 16), generator=torch.Generator().manual_seed(0))
    spec = {"r": 16, "target_modules": ["q_proj", "v_proj", "down_proj"], "init_lora_weights": False}
    ref = LoRA(**spec).apply(copy.deepcopy(base), Context(config={"seed": 3}))
    steps = [LoRA(**spec), FP8(backend="torch")]
    model = copy.deepcopy(base)
    for t in steps if order == "lora_then_fp8" else steps[::-1]:
        model = t.apply(model, Context(config={"seed": 3}))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, Float8Linear) and type(q.lora_A["default"]) is torch.nn.Linear
    assert isinstance(model.model.layers[0].mlp.up_proj, Float8Linear)  # not adapted, still FP8
    model(input_ids=ids, labels=ids).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(".lora_" in n for n in trained), trained
    with torch.no_grad():
        assert 1e-4 < _rel(model(input_ids=ids).logits, ref(input_ids=ids).logits) < 0.05


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("transforms.0.backend=tensorrt", "transforms.0.backend: expected one of"),
        ("transforms.0.recipe=blockwise", "transforms.0.recipe: expected one of"),
        ("transforms.0.recipe=delayed", "transforms.0.recipe: the torch backend has no recipe 'delayed'"),
        ("transforms.0.grad_dtype=e3m4", "transforms.0.grad_dtype: expected one of"),
        ("transforms.0.exclude_modules=layers.[0", "transforms.0.exclude_modules: is not a valid regular expression"),
        ("transforms.0.fsdp_float8_all_gather=true", "transforms.0.fsdp_float8_all_gather: needs backend: torchao"),
        ("transforms.0.amax_history_len=0", "transforms.0.amax_history_len: must be at least 1"),
        ("transforms.0.scaling=rowwise", "transforms.0.scaling: unknown key"),
    ],
)
def test_bad_values_fail_before_launch(tmp_path: Path, override: str, expect: str) -> None:
    (tmp_path / "model").mkdir()
    cfg = make_config(tmp_path, tmp_path / "model", transforms=[{"name": "fp8", "backend": "torch"}])
    proc = run_cli("validate", cfg, override, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stdout + proc.stderr


@pytest.mark.skipif(HAS_TE, reason="checks the message for a missing Transformer Engine")
def test_transformer_engine_missing_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    cfg = make_config(tmp_path, tmp_path / "model", transforms=[{"name": "fp8", "backend": "transformer_engine"}])
    proc = run_cli("validate", cfg, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "transforms.0.backend: transformer_engine is not installed" in err, err
    assert "pip install 'automodel-fp8[te]'" in err and "Traceback" not in err
    with pytest.raises(AutomodelError, match=r"transformer_engine is not installed.*automodel-fp8\[te\]"):
        FP8(backend="transformer_engine")


@pytest.mark.skipif(not (HAS_TE and torch.cuda.is_available()), reason="Transformer Engine needs an NVIDIA GPU")
def test_transformer_engine_layers_train_on_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU only
    base = _hf(tiny_model(tmp_path)).cuda().to(torch.bfloat16)
    ids = torch.randint(4, 48, (4, 32), device="cuda")
    ref = copy.deepcopy(base)(input_ids=ids, labels=ids).loss
    for recipe in ("tensorwise", "delayed"):
        model = FP8(backend="transformer_engine", recipe=recipe).apply(copy.deepcopy(base), Context(device="cuda"))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert abs(float(loss) - float(ref)) < 0.05
        assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


PRECOMPUTE = r'''
import os, sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from automodel.context import Context
from automodel.testing import tiny_model
from automodel_fp8.transform import FP8
from transformers import AutoModelForCausalLM

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
model = AutoModelForCausalLM.from_pretrained(tiny_model(sys.argv[1]))
fp8 = FP8(backend="torchao", fsdp_float8_all_gather=True, emulate=True)
model = fp8.apply(model, Context())
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
ids = torch.randint(0, 40, (2, 16))
model(input_ids=ids, labels=ids).loss.backward()
torch.optim.SGD(model.parameters(), lr=0.1).step()
weights = [m.weight._local_tensor for m in model.modules() if type(m).__name__ == "Float8Linear"]
assert weights and all(getattr(w, "_precomputed_scale", None) is None for w in weights)
fp8.after_optimizer_step(model, Context())  # what the loop calls after every optimizer step
scales = [w._precomputed_scale for w in weights]
amax = [w.detach().abs().max().double().clamp(min=1e-12) for w in weights]
want = [(torch.finfo(torch.float8_e4m3fn).max / a).float() for a in amax]
torch.testing.assert_close(torch.stack(scales), torch.stack(want))
print("precomputed", len(scales))
dist.destroy_process_group()
'''


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed")
def test_fsdp_float8_all_gather_precomputes_scales_after_the_optimizer_step(tmp_path: Path) -> None:
    """With torchao's FP8 all-gather the transform's after_optimizer_step (a Transform contract member the
    loop calls) sets every FP8 weight's scale from the updated weights (FSDP2, one gloo rank)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", PRECOMPUTE, str(tmp_path), str(port)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "precomputed" in proc.stdout, proc.stdout + proc.stderr[-3000:]
