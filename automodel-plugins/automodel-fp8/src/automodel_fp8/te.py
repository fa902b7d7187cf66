"""The ``transformer_engine`` backend: ``te.Linear`` layers, each running under FP8 autocast.

GPU only (NVIDIA, compute capability 8.9+); :func:`automodel_fp8.transform.check_device` refuses
anything else before this module is imported. Not tested in CI: no GPU there (see docs/fp8.md).

Each converted layer is a ``te.Linear`` with the same ``weight`` / ``bias`` parameters (copied, or
left on the meta device for FSDP2 meta-init) whose forward enters FP8 autocast with the chosen
recipe, so the training loop needs no change. TE adds a per-layer ``_extra_state`` (its FP8 scaling
state) to the state dict; it is in no pretrained file (``FP8.checkpoint_key`` says so).
"""

from __future__ import annotations

from typing import Any


def make_recipe(recipe: str, grad_dtype: str, amax_history_len: int) -> Any:
    from transformer_engine.common import recipe as te_recipe

    fmt = te_recipe.Format.HYBRID if grad_dtype == "e5m2" else te_recipe.Format.E4M3
    if recipe == "delayed":
        return te_recipe.DelayedScaling(fp8_format=fmt, amax_history_len=amax_history_len, amax_compute_algo="max")
    return te_recipe.Float8CurrentScaling(fp8_format=fmt)


def _autocast(recipe: Any) -> Any:
    import transformer_engine.pytorch as te

    if hasattr(te, "autocast"):  # TE >= 2.8
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def convert(model: Any, names: list[str], recipe: str, grad_dtype: str, amax_history_len: int) -> None:
    """Replace each ``nn.Linear`` named in ``names`` with a ``te.Linear`` under FP8 autocast."""
    import torch
    import transformer_engine.pytorch as te

    fp8_recipe = make_recipe(recipe, grad_dtype, amax_history_len)

    class AutocastLinear(te.Linear):
        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
            with _autocast(fp8_recipe):
                return super().forward(x, *args, **kwargs)

    for name in names:
        old = model.get_submodule(name)
        meta = old.weight.is_meta
        new = AutocastLinear(old.in_features, old.out_features, bias=old.bias is not None,
                             params_dtype=old.weight.dtype, device="meta" if meta else old.weight.device)
        if not meta:
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
        new.weight.requires_grad_(old.weight.requires_grad)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
