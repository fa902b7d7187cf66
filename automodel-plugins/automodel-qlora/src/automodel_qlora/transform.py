"""The ``qlora`` transform: automodel-lora's ``lora`` transform (the same keys, the same adapters) on a
base that ``hf_quantized`` loaded quantized, with an export that knows the base is quantized.

Export (``<output_dir>/hf``):

* the adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` + tokenizer), whose
  ``base_model_name_or_path`` is the original, unquantized checkpoint: plain ``peft`` loads it there
  (``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)``), or on a base quantized
  again the same way, which reproduces the trained model exactly;
* with ``export_merged`` (or ``automodel export --merged``), ``<out>/merged``: the quantized base
  dequantized to the base dtype with the adapters folded in, a plain ``transformers`` model that computes
  what the trained (quantized) model computed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError
from automodel_lora.transform import LoRA, check_targets
from automodel_lora.transform import validate_args as lora_validate_args

from automodel_qlora.backends import quantized_layers


class QLoRA(LoRA):
    """LoRA / DoRA adapters on a quantized base (``model.name: hf_quantized``).

    Takes every key of the ``lora`` transform (``r``, ``alpha``, ``dropout``, ``target_modules``,
    ``exclude_modules``, ``use_dora``, ``use_rslora``, ``modules_to_save``, ``init_lora_weights``,
    ``export_merged``, ``seed``); see automodel-lora. ``export_merged`` writes the merged model with the
    base dequantized to the loader's ``dtype``.
    """

    def apply(self, model: Any, ctx: Any) -> Any:
        layers = quantized_layers(model)
        if not layers:
            raise AutomodelError(
                "transforms.qlora: the model has no quantized layers; qlora trains adapters on a base that "
                "model.name: hf_quantized loaded in 4 or 8 bits\n    -> use model: {name: hf_quantized, pretrained: ...}, "
                "or the lora transform for a full-precision base"
            )
        model = super().apply(model, ctx)
        ctx.print(f"qlora: adapters on a quantized base ({len(layers)} quantized linear layers, frozen)")
        return model

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path, ctx: Any) -> Path:
        """The adapter directory (for the original base) at ``out_dir``; with ``export_merged`` (or
        ``automodel export --merged``: ``ctx.export_options["merged"]``, declared by LoRA's
        ``export_options``) also ``out_dir/merged``, the dequantized merged model."""
        from automodel_lora.export import save_adapter

        if self.peft_model is None:
            raise AutomodelError("transforms.qlora: export() called before apply()")
        out = Path(out_dir)
        base = self.peft_model.base_model.model.config.name_or_path
        if base and Path(base).expanduser().exists():  # absolute: the adapter loads from any directory
            self.peft_model.peft_config["default"].base_model_name_or_path = str(Path(base).expanduser().resolve())
        save_adapter(self.peft_model, model, tokenizer, out, ctx)
        if ctx.export_options.get("merged", self.export_merged):
            dtype = ((ctx.config or {}).get("model") or {}).get("dtype", "bfloat16")
            save_merged_dequantized(self.peft_model, model, tokenizer, out / "merged", ctx, dtype)
        ctx.print(f"qlora: exported the adapter to {out} (loads with peft on the original base "
                  f"{self.peft_model.base_model.model.config.name_or_path})"
                  + (f" and the dequantized merged model to {out / 'merged'}" if (out / "merged").exists() else ""))
        return out


# --------------------------------------------------------------------------------------------------
# Merged export
# --------------------------------------------------------------------------------------------------


def dequantized_state_dict(model: Any, dtype: Any) -> dict[str, Any]:
    """The adapted model's parameters and persistent buffers by their names in the Hugging Face model,
    quantized weights dequantized, floating tensors cast to ``dtype`` (complete on every rank; sharded
    weights are gathered, a collective)."""
    from automodel.weights import unwrap
    from torch.distributed.tensor import DTensor

    from automodel_qlora.backends import dequantized_weight, quantized_kind

    base = unwrap(model)
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for mname, module in base.named_modules():
        prefix = f"{mname}." if mname else ""
        kind = quantized_kind(module)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied (lm_head / embeddings): once, as save_pretrained writes it
                continue
            seen.add(id(p))
            if kind and pname == "weight":
                value = dequantized_weight(module, p)
            else:
                value = p.full_tensor() if isinstance(p, DTensor) else p
            out[prefix + pname] = value.detach().to("cpu", dtype if value.is_floating_point() else value.dtype)
        for bname, b in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:
                out[prefix + bname] = b.detach().to("cpu")
    return out


def merged_model(peft_model: Any, state: dict[str, Any], dtype: Any) -> Any:
    """A fresh full-precision Hugging Face model (no quantization_config) holding ``state`` with the
    adapters merged in. Built on the meta device, so only ``state`` takes memory."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(peft_model.peft_config["default"])
    config.inference_mode = False
    hf_config = copy.deepcopy(peft_model.base_model.model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(hf_config, attr):
            delattr(hf_config, attr)
    hf_config.dtype = dtype
    with init_empty_weights(include_buffers=False):
        base = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    fresh = get_peft_model(base, config)
    missing, unexpected = fresh.base_model.model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(base, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise AutomodelError(f"qlora merged export: the dequantized weights do not fit the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(base, "tie_weights"):
        base.tie_weights()
    return fresh.merge_and_unload()


def save_merged_dequantized(peft_model: Any, model: Any, tokenizer: Any, out: Path, ctx: Any, dtype: str) -> Path:
    import torch

    torch_dtype = getattr(torch, dtype)
    state = dequantized_state_dict(model, torch_dtype)
    if ctx.is_main:
        merged = merged_model(peft_model, state, torch_dtype)
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        _normal_permissions(out)
    return out


def _normal_permissions(out: Path) -> None:
    """Files as the umask says (safetensors writes 0600 whatever the umask), like any other export."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)


# --------------------------------------------------------------------------------------------------
# Checks before launch
# --------------------------------------------------------------------------------------------------


def validate_args(args: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """lora's checks, plus: the model section loads a quantized base, and (for a local checkpoint) every
    target names linear layers of that model, checked on a meta-device copy built from its config.json."""
    out = lora_validate_args(args)
    model = config.get("model") or {}
    if model.get("name") != "hf_quantized" and "_target_" not in model:
        out.append(("", f"qlora trains adapters on a quantized base, but model.name is {model.get('name')!r}",
                    "use model: {name: hf_quantized, pretrained: ...}, or the lora transform for a full-precision base"))
        return out
    if out:
        return out
    pretrained = model.get("pretrained")
    if isinstance(pretrained, str) and (Path(pretrained).expanduser() / "config.json").is_file():
        problem = _target_problem(args, Path(pretrained).expanduser(), bool(model.get("trust_remote_code")))
        if problem:
            out.append(("target_modules", problem, ""))
    return out


def _target_problem(args: dict[str, Any], pretrained: Path, trust_remote_code: bool) -> str | None:
    """check_targets of automodel-lora on the model of ``pretrained`` built on the meta device (no weights
    read): the message listing the model's linear layers, or None."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.from_pretrained(str(pretrained), trust_remote_code=trust_remote_code)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - not buildable here: the loader reports it at load time
        return None
    keys = {k: v for k, v in args.items() if k in ("r", "alpha", "dropout", "target_modules", "exclude_modules",
                                                    "use_dora", "use_rslora", "modules_to_save", "init_lora_weights")}
    try:
        check_targets(model, LoRA(**keys).lora_config())
    except AutomodelError as e:
        return str(e).removeprefix("transforms.lora: ")
    return None


QLoRA.validate_args = staticmethod(validate_args)  # type: ignore[attr-defined]
