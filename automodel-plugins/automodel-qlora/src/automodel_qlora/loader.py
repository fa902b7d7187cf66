"""The ``hf_quantized`` model loader: a pretrained causal LM with its linear layers quantized while it loads.

    model: {name: hf_quantized, pretrained: ./my-model, bits: 4, quant_type: nf4, double_quant: true,
            compute_dtype: bfloat16}

Every check that needs only the config runs in ``validate_args`` (before any process starts): the backend
is installed and supports the options, the base is not already quantized by another method, a ``qlora``
transform trains adapters on it, and the layout is one the backend composes with.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

from automodel.architecture import hf_tokenizer_dir
from automodel.errors import AutomodelError

from automodel_qlora.backends import BACKENDS, import_problem, install_hint, quantize_linears_nf4

DTYPES = ("float32", "bfloat16", "float16")
Dtype = Literal["float32", "bfloat16", "float16"]


def hf_quantized(
    ctx: Any,
    pretrained: str,
    tokenizer: str | None = None,
    bits: Literal[4, 8] = 4,
    backend: Literal["bitsandbytes", "torchao"] = "bitsandbytes",
    quant_type: Literal["nf4", "fp4"] = "nf4",
    double_quant: bool = True,
    compute_dtype: Dtype | None = None,
    dtype: Dtype = "bfloat16",
    skip_modules: list[str] | None = None,
    upcast_unquantized: bool = True,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``AutoModelForCausalLM`` from ``pretrained`` with its linear layers quantized, frozen, ready
    for LoRA adapters (``transforms: [{name: qlora, ...}]``).

    * ``bits``: 4 (``quant_type`` ``nf4``: 4-bit NormalFloat, the QLoRA paper's; or ``fp4``) or 8 (LLM.int8,
      bitsandbytes only).
    * ``backend``: ``bitsandbytes`` (quantizes layer by layer while loading; any single-process or DDP run)
      or ``torchao`` (NF4 only; the weights become ``NF4Tensor``, which FSDP2 shards).
    * ``double_quant``: quantize the per-block scales too (about 0.37 bit per weight saved). torchao always does.
    * ``compute_dtype``: dtype of the matmuls against the dequantized weights (default: ``dtype``).
      torchao computes in the activations' dtype, i.e. ``dtype``.
    * ``dtype``: dtype of the weights that stay unquantized (embeddings, norms, output head) and of the
      activations; ``upcast_unquantized`` (peft's ``prepare_model_for_kbit_training``) keeps them in float32.
    * ``skip_modules``: linear layers (names or name suffixes) to leave unquantized, besides the output head.

    The model is never built on the meta device: each rank holds the whole quantized base (an FSDP2 run
    with torchao then shards it). Activation checkpointing (the ``activation_checkpointing`` transform
    or fsdp2's key) gets the input gradients it needs (``enable_input_require_grads``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    problem = import_problem(backend)
    if problem:
        raise AutomodelError(f"model.backend: {problem}")
    torch_dtype = getattr(torch, dtype)
    compute = getattr(torch, compute_dtype or dtype)
    model_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    if getattr(model_config, "quantization_config", None):
        raise AutomodelError(f"model.pretrained: {already_quantized(model_config.quantization_config)}")
    tok = AutoTokenizer.from_pretrained(tokenizer or pretrained, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    device = torch.device(ctx.device)
    skip = list(skip_modules or [])

    if backend == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        qconfig = BitsAndBytesConfig(
            load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip or None,
        )
        model = AutoModelForCausalLM.from_pretrained(
            pretrained, config=model_config, dtype=torch_dtype, quantization_config=qconfig,
            device_map={"": device}, **kwargs,
        )
        kept: list[str] = []
    else:  # torchao: load unquantized on the host, quantize layer by layer onto the device
        model = AutoModelForCausalLM.from_pretrained(pretrained, config=model_config, dtype=torch_dtype, **kwargs)
        _, kept = quantize_linears_nf4(model, skip, device, shards=ctx.world_size)
        model.to(device)
    model.config.name_or_path = pretrained
    keep_frozen_base_out_of_checkpoints(model)

    if upcast_unquantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for p in model.parameters():
        p.requires_grad_(False)
    if _checkpoints_activations(ctx.config or {}):
        model.enable_input_require_grads()  # what peft's preparation does for (reentrant) checkpointing

    from automodel_qlora.memory import base_bytes, describe_quantization

    quantized, full = base_bytes(model), base_bytes(model, unquantized_dtype=torch_dtype)
    ctx.print(
        f"hf_quantized: {describe_quantization(model, backend, bits, quant_type, double_quant, compute_dtype or dtype)}; "
        f"base weights {quantized / 2**20:.2f} MiB ({full / 2**20:.2f} MiB in {dtype})"
        + (f"; left unquantized (shape not a multiple of the NF4 blocks): {', '.join(kept)}" if kept else "")
    )
    return model, tok


def keep_frozen_base_out_of_checkpoints(model: Any) -> None:
    """Leave the quantized weights out of ``model.state_dict()`` and have ``load_state_dict`` keep the ones
    this loader made: checkpoints (DCP) and ``automodel export`` then restore the adapters, the unquantized
    weights, optimizer and data position, and the frozen 4-bit base is the one quantized from
    ``pretrained`` again, identical to the one trained with.

    Why: the quantized weights never change, so saving them only costs space (most of a QLoRA checkpoint);
    bitsandbytes saves 4-bit weights in another layout than it computes with on CPU, plus quantization-state
    entries that ``load_state_dict`` refuses; DCP cannot reshard torchao's ``NF4Tensor`` on load (it has no
    ``aten.slice`` at arbitrary offsets), so a 2-process FSDP2 checkpoint could not be exported or resumed
    in one process."""
    from automodel_qlora.backends import quantized_kind

    def drop(module: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for key in [k for k in state_dict if k == prefix + "weight" or k.startswith(prefix + "weight.")]:
            del state_dict[key]  # the weight and bitsandbytes' quant_state entries (absmax, quant_map, nested_*)
        for key in (prefix + "SCB", prefix + "weight_format"):  # LLM.int8's row scales
            state_dict.pop(key, None)

    def keep(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        drop(module, state_dict, prefix, None)
        state_dict[prefix + "weight"] = module.weight

    for module in model.modules():
        if quantized_kind(module) is not None:
            module.register_state_dict_post_hook(drop)
            module.register_load_state_dict_pre_hook(keep)


# --------------------------------------------------------------------------------------------------
# Checks before launch
# --------------------------------------------------------------------------------------------------


def already_quantized(qconfig: Any) -> str:
    method = qconfig.get("quant_method") if isinstance(qconfig, dict) else getattr(qconfig, "quant_method", None)
    method = getattr(method, "value", method) or "unknown"
    return (f"the base is already quantized ({method}, quantization_config in its config.json); hf_quantized "
            "quantizes full-precision weights itself. Use the original (unquantized) checkpoint, or, for a "
            f"{method} checkpoint, model.name: hf with a lora transform (peft trains adapters on it as it is)")


def _checkpoints_activations(cfg: dict[str, Any]) -> bool:
    transforms = [t for t in cfg.get("transforms") or [] if isinstance(t, dict)]
    parallel = [p for p in cfg.get("parallel") or [] if isinstance(p, dict)]
    return any(t.get("name") == "activation_checkpointing" for t in transforms) or any(
        p.get("name") == "fsdp2" and p.get("activation_checkpointing") for p in parallel)


def _local(path: str) -> Path | None:
    p = Path(path).expanduser()
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or p.exists():
        return p
    return None  # a hub id


def validate_args(args: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Everything checkable from the config alone (no torch import)."""
    out: list[tuple[str, str, str]] = []
    backend = args.get("backend", "bitsandbytes")
    bits = args.get("bits", 4)
    quant_type = args.get("quant_type", "nf4")
    spec = BACKENDS.get(backend)
    if spec is None:
        return out  # the Literal annotation reports it
    if importlib.util.find_spec(spec.module) is None:
        out.append(("backend", f"{bits}-bit quantization with {backend} needs {backend}, which is not installed",
                    install_hint(backend)))
    if bits not in spec.bits:
        other = [b for b, s in BACKENDS.items() if bits in s.bits]
        out.append(("bits", f"{backend} quantizes to {' or '.join(map(str, spec.bits))} bits, not {bits}",
                    f"use backend: {other[0]}" if other else "use bits: 4"))
    elif bits == 4 and quant_type not in spec.quant_types:
        out.append(("quant_type", f"{backend} has no 4-bit {quant_type}", "use quant_type: nf4 (or backend: bitsandbytes)"))
    if bits == 8 and "quant_type" in args:
        out.append(("quant_type", "applies to 4-bit only (8-bit is LLM.int8)", "remove quant_type, or use bits: 4"))
    if backend == "torchao":
        dtype = args.get("dtype", "bfloat16")
        if args.get("compute_dtype") not in (None, dtype):
            out.append(("compute_dtype", f"torchao's NF4 matmul runs in the activations' dtype (dtype: {dtype}), "
                        f"not {args['compute_dtype']}", f"remove compute_dtype, or set dtype: {args['compute_dtype']}"))
        if args.get("double_quant") is False:
            out.append(("double_quant", "torchao's NF4 tensor always quantizes its scales", "remove double_quant, or use backend: bitsandbytes"))

    pretrained = args.get("pretrained")
    if isinstance(pretrained, str):
        local = _local(pretrained)
        if local is not None and not local.exists():
            out.append(("pretrained", f"local path not found: {pretrained} (resolved: {local.resolve()})",
                        "relative paths are relative to the current directory; write ${cfg_dir}/... for paths next to the config"))
        elif local is not None and (local / "config.json").is_file():
            try:
                qconfig = json.loads((local / "config.json").read_text()).get("quantization_config")
            except (OSError, ValueError):
                qconfig = None
            if qconfig:
                out.append(("pretrained", already_quantized(qconfig), ""))
    tokenizer = args.get("tokenizer")
    if isinstance(tokenizer, str) and (t := _local(tokenizer)) is not None and not t.exists():
        out.append(("tokenizer", f"local path not found: {tokenizer}", "give the tokenizer directory, or leave it out to use pretrained's"))
    if args.get("dtype") == "float16":
        out.append(("dtype", "float16 weights overflow in training without loss scaling, which automodel does not do",
                    "use bfloat16 (or float32)"))
    out += [("", message, hint) for message, hint in _layout_problems(args, config)]
    return out


def _layout_problems(args: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str]]:
    """The transforms and parallelizers around a quantized base (reported under ``model``)."""
    out: list[tuple[str, str]] = []
    backend = args.get("backend", "bitsandbytes")
    transforms = [t for t in config.get("transforms") or [] if isinstance(t, dict)]
    names = [t.get("name") for t in transforms]
    if "qlora" not in names:
        if "lora" in names:
            out.append(("a quantized base needs the qlora transform, not lora (lora's merged export reads full-precision "
                        "weights)", "rename the transform: {name: qlora, ...} takes the same keys as lora"))
        else:
            out.append(("a quantized base is frozen: without adapters nothing trains",
                        "add transforms: [{name: qlora, r: 16, alpha: 32, target_modules: all-linear}]"))
    if "fp8" in names:
        out.append(("the fp8 transform replaces the linear layers that hf_quantized quantized", "use one of them"))
    for i, p in enumerate(config.get("parallel") or []):
        name = p.get("name") if isinstance(p, dict) else None
        if name == "fsdp2" and not BACKENDS[backend].fsdp2:
            out.append((f"parallel.{i}: fsdp2 does not shard bitsandbytes' 4-/8-bit weights correctly (their quantization "
                        "state stays unsharded: two ranks compute different losses on the same batch)",
                        "use backend: torchao (NF4Tensor shards under FSDP2), or the ddp parallelizer (each rank holds the "
                        "whole quantized base, which is small)"))
        elif name == "fsdp2" and isinstance(p, dict) and p.get("cpu_offload"):
            out.append((f"parallel.{i}.cpu_offload: not supported with a quantized base (untested with NF4Tensor)",
                        "remove cpu_offload; the NF4 base already takes a quarter of the bf16 memory"))
        elif name == "fsdp2" and isinstance(p, dict) and p.get("param_dtype"):
            out.append((f"parallel.{i}.param_dtype: torchao's NF4 all-gather does not apply FSDP2's mixed-precision "
                        "param_dtype (its fsdp_post_all_gather keeps the NF4 dtype)",
                        "remove param_dtype and set model.dtype (the dtype of the activations and unquantized weights)"))
        elif name == "tp":
            out.append((f"parallel.{i}: {name} cannot split quantized weights (no DTensor sharding of packed 4-/8-bit blocks)",
                        "use ddp" + (" or fsdp2" if BACKENDS[backend].fsdp2 else "")))
    return out


def _model_config(args: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture fields before launch: a local ``pretrained`` directory's config.json."""
    from automodel.architecture import config_json_fields

    return config_json_fields(None, args.get("pretrained"))


hf_quantized.validate_args = validate_args  # type: ignore[attr-defined]
hf_quantized.path_args = ("pretrained", "tokenizer")  # type: ignore[attr-defined]
hf_quantized.model_config = _model_config  # type: ignore[attr-defined]
hf_quantized.tokenizer_dir = hf_tokenizer_dir  # type: ignore[attr-defined]
