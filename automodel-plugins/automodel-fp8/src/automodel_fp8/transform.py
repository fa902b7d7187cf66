"""The ``fp8`` transform: swap the model's eligible ``nn.Linear`` layers for FP8 training layers.

``apply`` runs before the parallelizers, so FSDP2 shards (and TP splits) the converted layers like any
other; the converted layers keep their parameter names and high-precision weights (torch and
torchao backends), so checkpoints, the HF export and meta-device loading are unchanged.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from typing import Any, Literal

from automodel.errors import AutomodelError

Backend = Literal["auto", "torchao", "transformer_engine", "torch"]
Recipe = Literal["tensorwise", "rowwise", "rowwise_with_gw_hp", "delayed"]

#: The recipes each backend implements.
RECIPES: dict[str, tuple[str, ...]] = {
    "torch": ("tensorwise", "rowwise"),
    "torchao": ("tensorwise", "rowwise", "rowwise_with_gw_hp"),
    "transformer_engine": ("tensorwise", "delayed"),
}
#: The import name and the pip command of each backend's library.
LIBRARY = {
    "torchao": ("torchao", "pip install 'automodel-fp8[torchao]'"),
    "transformer_engine": ("transformer_engine", "pip install 'automodel-fp8[te]' (CUDA machines only)"),
}
MULTIPLE = 16  # FP8 matmuls (torch._scaled_mm, cuBLASLt) need both dims of the weight divisible by 16


class FP8:
    """FP8 training of the model's linear layers.

    Config keys:

    * ``backend``: ``torchao`` (``torchao.float8.convert_to_float8_training``), ``transformer_engine``
      (``te.Linear`` under FP8 autocast; NVIDIA GPUs with FP8, compute capability 8.9+), ``torch``
      (this package's ``Float8Linear`` on ``torch._scaled_mm``; no extra dependency, runs on CPU) or
      ``auto`` (default): torchao where it is installed, else torch.
    * ``recipe``: ``tensorwise`` (default; dynamic per-tensor scales; TE: current scaling),
      ``rowwise`` (per-row scales; torch, torchao), ``rowwise_with_gw_hp`` (torchao: rowwise, the
      weight gradient in high precision), ``delayed`` (TE: scales from an amax history).
    * ``grad_dtype``: FP8 format of the output gradient in the backward pass: ``e5m2`` or ``e4m3``;
      ``auto`` (default): ``e5m2`` for ``tensorwise`` and ``delayed`` (TE's HYBRID format), ``e4m3``
      for the rowwise recipes (torchao's choice).
      The forward pass is always ``e4m3``.
    * ``exclude_modules``: names (a layer matches when its full name equals or ends with
      ``.<name>``) or a regular expression over full names, of linear layers to keep in high
      precision. The output head (``lm_head``), LoRA adapter layers, and layers whose input or output
      size is not a multiple of 16 are always kept.
    * ``emulate``: torch / torchao: quantize exactly as FP8 training does but multiply the dequantized
      values in float32 instead of calling ``torch._scaled_mm`` (same results, no FP8 hardware
      needed, no speed-up). Default (unset): emulate on CPU, where ``torch._scaled_mm`` exists but is
      a slow reference kernel (hundreds of times slower than the emulation), and use the FP8 kernels
      on GPUs.
    * ``fsdp_float8_all_gather``: torchao + tensorwise under FSDP2: all-gather the weights in FP8 (half
      the communication of bf16); the scales are precomputed after each optimizer step.
    * ``amax_history_len``: TE ``delayed`` recipe: length of the amax history.
    """

    def __init__(
        self,
        backend: Backend = "auto",
        recipe: Recipe = "tensorwise",
        grad_dtype: Literal["auto", "e5m2", "e4m3"] = "auto",
        exclude_modules: list[str] | str | None = None,
        emulate: bool | None = None,
        fsdp_float8_all_gather: bool = False,
        amax_history_len: int = 16,
    ):
        args = dict(backend=backend, recipe=recipe, grad_dtype=grad_dtype, exclude_modules=exclude_modules,
                    emulate=emulate, fsdp_float8_all_gather=fsdp_float8_all_gather, amax_history_len=amax_history_len)
        problems = validate_args(args)
        if problems:
            key, message, hint = problems[0]
            raise AutomodelError(f"transforms.fp8.{key}: {message}" + (f" ({hint})" if hint else ""))
        self.backend = resolve_backend(backend)
        self.recipe = recipe
        self.grad_dtype = grad_dtype if grad_dtype != "auto" else ("e5m2" if recipe in ("tensorwise", "delayed") else "e4m3")
        self.exclude_modules = exclude_modules
        self.emulate = emulate
        self.fsdp_float8_all_gather = fsdp_float8_all_gather
        self.amax_history_len = amax_history_len
        if recipe not in RECIPES[self.backend]:
            raise AutomodelError(
                f"transforms.fp8.recipe: the {self.backend} backend has no recipe {recipe!r}"
                + (" (backend auto chose torch: torchao is not installed)" if backend == "auto" else "")
                + f"; use one of {', '.join(RECIPES[self.backend])}"
            )
        self.converted: list[str] = []  # full names of the layers apply() converted
        self.skipped: dict[str, str] = {}  # full name -> why it was kept in high precision
        self.precompute_scales = False  # torchao FP8 all-gather: after_optimizer_step precomputes the scales (set by apply)

    # -- the transform contract -------------------------------------------------------------------

    def apply(self, model: Any, ctx: Any) -> Any:
        import torch

        meta = any(p.is_meta for p in model.parameters())
        device = torch.device(ctx.device)
        emulate = self.emulate if self.emulate is not None else device.type == "cpu"
        check_device(self.backend, device, emulate)
        self.converted, self.skipped = select_layers(model, self.exclude_modules)
        if not self.converted:
            raise AutomodelError(
                "transforms.fp8: no linear layer to convert; kept in high precision:\n" + _by_reason(self.skipped)
                + "\n  -> check exclude_modules (FP8 needs input and output sizes divisible by 16)"
            )
        if self.backend == "torch":
            self._apply_torch(model, emulate)
        elif self.backend == "torchao":
            self._apply_torchao(model, emulate)
        else:
            from automodel_fp8.te import convert

            convert(model, self.converted, self.recipe, self.grad_dtype, self.amax_history_len)
        kinds = Counter(n.rsplit(".", 1)[-1] for n in self.converted)
        reasons = Counter(self.skipped.values())
        ctx.print(
            f"fp8: {self.backend} backend, {self.recipe} scaling (e4m3 forward, {self.grad_dtype} gradients"
            f"{', emulated in float32' + (' on CPU' if self.emulate is None else '') if emulate else ''}) on {len(self.converted)} linear layers "
            f"({', '.join(f'{k} x{n}' for k, n in kinds.items())})"
            + (f"; kept in high precision: {', '.join(f'{why} x{n}' for why, n in reasons.items())}" if reasons else "")
            + ("; on the meta device" if meta else "")
        )
        return model

    def after_optimizer_step(self, model: Any, ctx: Any) -> None:
        """torchao with FP8 all-gather under FSDP2: precompute the weights' FP8 scales for the next step in
        one all-reduce (torchao's recommended ``precompute_float8_dynamic_scale_for_fsdp``)."""
        if self.precompute_scales:
            from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

            precompute_float8_dynamic_scale_for_fsdp(model)

    def checkpoint_key(self, name: str) -> str | None:
        """Parameter names are unchanged; Transformer Engine's per-layer FP8 state (``_extra_state``) is
        in no pretrained file."""
        return None if name.endswith("._extra_state") else name

    # -- backends ---------------------------------------------------------------------------------

    def _apply_torch(self, model: Any, emulate: bool) -> None:
        from automodel_fp8.linear import DTYPES, Float8Linear

        for name in self.converted:
            Float8Linear.convert(model.get_submodule(name), rowwise=self.recipe == "rowwise",
                                 grad_dtype=DTYPES[self.grad_dtype], emulate=emulate)

    def _apply_torchao(self, model: Any, emulate: bool) -> None:
        import dataclasses
        import logging

        import torch

        logging.getLogger("torchao").setLevel(logging.ERROR)  # kernels this machine cannot load: not ours to fix
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        if self.recipe == "tensorwise":
            config = Float8LinearConfig(enable_fsdp_float8_all_gather=self.fsdp_float8_all_gather)
        else:
            config = Float8LinearConfig.from_recipe_name(self.recipe)
        grad = {"e5m2": torch.float8_e5m2, "e4m3": torch.float8_e4m3fn}[self.grad_dtype]
        cast = dataclasses.replace(config.cast_config_grad_output, target_dtype=grad)
        changes: dict[str, Any] = {"emulate": emulate, "cast_config_grad_output": cast}
        if config.cast_config_grad_output_for_grad_weight is not None:
            changes["cast_config_grad_output_for_grad_weight"] = dataclasses.replace(
                config.cast_config_grad_output_for_grad_weight, target_dtype=grad)
        config = dataclasses.replace(config, **changes)
        wanted = set(self.converted)
        convert_to_float8_training(model, config=config, module_filter_fn=lambda _m, fqn: fqn in wanted)
        self.precompute_scales = self.fsdp_float8_all_gather


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def resolve_backend(backend: str) -> str:
    """``auto``: torchao where it is installed, else torch."""
    if backend == "auto":
        return "torchao" if importlib.util.find_spec("torchao") is not None else "torch"
    return backend


def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Checks of the YAML values run before launch (nothing imported: libraries are only looked up)."""
    out: list[tuple[str, str, str]] = []
    backend = args.get("backend", "auto")
    recipe = args.get("recipe", "tensorwise")
    if backend in LIBRARY and importlib.util.find_spec(LIBRARY[backend][0]) is None:
        out.append(("backend", f"{backend} is not installed", f"{LIBRARY[backend][1]}, or use backend: torch"))
    if backend in RECIPES and recipe in RECIPES["torchao"] + RECIPES["transformer_engine"] and recipe not in RECIPES[backend]:
        users = [b for b, rs in RECIPES.items() if recipe in rs]
        out.append(("recipe", f"the {backend} backend has no recipe {recipe!r}",
                    f"{backend} implements {', '.join(RECIPES[backend])}; {recipe} is in {', '.join(users)}"))
    if args.get("emulate") and backend == "transformer_engine":
        out.append(("emulate", "transformer_engine has no emulation mode", "use backend: torch or torchao to emulate FP8"))
    if args.get("fsdp_float8_all_gather") and (backend not in ("auto", "torchao") or recipe != "tensorwise"):
        out.append(("fsdp_float8_all_gather", "needs backend: torchao and recipe: tensorwise",
                    "FP8 all-gather is torchao's, for per-tensor scales only"))
    history = args.get("amax_history_len", 16)
    if isinstance(history, int) and history < 1:
        out.append(("amax_history_len", f"must be at least 1, got {history}", "TE's default is 1024; 16 is common"))
    exclude = args.get("exclude_modules")
    if isinstance(exclude, str) and not re.fullmatch(r"\w+", exclude):
        try:
            re.compile(exclude)
        except re.error as e:
            out.append(("exclude_modules", f"is not a valid regular expression: {e}",
                        "give a list of layer names (e.g. [down_proj]) or a regex over full names"))
    return out


FP8.validate_args = staticmethod(validate_args)  # type: ignore[attr-defined]


def check_device(backend: str, device: Any, emulate: bool) -> None:
    """One clear error when the device cannot run the backend's FP8 matmuls."""
    import torch

    device = torch.device(device)
    if backend == "transformer_engine":
        if importlib.util.find_spec("transformer_engine") is None:
            raise AutomodelError(f"transforms.fp8: transformer_engine is not installed; {LIBRARY[backend][1]}, "
                                 "or use backend: torch or torchao")
        if device.type != "cuda":
            raise AutomodelError(
                f"transforms.fp8: backend transformer_engine needs an NVIDIA GPU with FP8 support (compute capability "
                f"8.9+: Ada, Hopper, Blackwell); this run is on {device.type}. Use backend: torch or torchao on CPU"
            )
        ok, reason = _te_fp8_support(device)
        if not ok:
            raise AutomodelError(f"transforms.fp8: Transformer Engine cannot run FP8 on {torch.cuda.get_device_name(device)}: "
                                 f"{reason}; use backend: torch or torchao with emulate: true to check numerics")
        return
    if device.type == "cuda" and not emulate and torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        raise AutomodelError(
            f"transforms.fp8: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no FP8 matmuls; "
            "FP8 training needs 8.9+ (Ada, Hopper, Blackwell). Set emulate: true to check FP8 numerics in float32 "
            "(no speed-up), or drop the fp8 transform"
        )


def _te_fp8_support(device: Any) -> tuple[bool, str]:
    """TE's own check (``check_fp8_support``, in ``fp8`` or, in newer releases, ``quantization``), else
    the compute capability."""
    import importlib

    import torch

    for module in ("transformer_engine.pytorch.fp8", "transformer_engine.pytorch.quantization"):
        try:
            return importlib.import_module(module).check_fp8_support()
        except (ImportError, AttributeError):
            continue
    ok = torch.cuda.get_device_capability(device) >= (8, 9)
    return ok, "" if ok else "compute capability 8.9 or higher required for FP8"


def _by_reason(skipped: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for name, why in skipped.items():
        groups.setdefault(why, []).append(name)
    return "\n".join(f"    {why}: {len(names)} layer{'s' if len(names) > 1 else ''} ({', '.join(names[:3])}"
                     f"{', ...' if len(names) > 3 else ''})" for why, names in groups.items())


def _matches(name: str, pattern: list[str] | str | None) -> bool:
    if pattern is None:
        return False
    if isinstance(pattern, str):
        if re.fullmatch(r"\w+", pattern):
            pattern = [pattern]
        else:
            return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def select_layers(model: Any, exclude: list[str] | str | None = None) -> tuple[list[str], dict[str, str]]:
    """The full names of the linear layers to convert, and the linear layers kept in high precision
    with the reason: the output head, LoRA adapter layers, ``exclude`` (names or a regex), sizes not
    divisible by 16."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    convert: list[str] = []
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if type(m) is not nn.Linear:
            continue
        if m is head:
            skipped[name] = "output head"
        elif any(part.startswith("lora_") for part in name.split(".")):
            skipped[name] = "LoRA adapter"
        elif _matches(name, exclude):
            skipped[name] = "exclude_modules"
        elif m.in_features % MULTIPLE or m.out_features % MULTIPLE:
            skipped[name] = f"size {m.in_features}x{m.out_features} not divisible by {MULTIPLE}"
        else:
            convert.append(name)
    if isinstance(exclude, list):
        names = [n for n, _ in model.named_modules()]
        unknown = [p for p in exclude if not any(n == p or n.endswith("." + p) for n in names)]
        if unknown:
            raise AutomodelError(f"transforms.fp8.exclude_modules: {', '.join(map(repr, unknown))} matches no module; "
                                 f"the model's linear layers are named like {', '.join(sorted({n.rsplit('.', 1)[-1] for n in convert + list(skipped)}))}")
    return convert, skipped
