"""The ``hf_vlm`` model loader: any ``transformers`` image-text-to-text model and its processor.

The model is ``AutoModelForImageTextToText`` (Llava, Qwen2-VL / 2.5-VL, Gemma 3, Idefics3, Mistral 3, ...);
the "tokenizer" handed to datasets and written by the export is the model's ``AutoProcessor`` (tokenizer +
image processor + chat template), so ``<output_dir>/hf`` loads with ``AutoModelForImageTextToText`` and
``AutoProcessor`` as it is.

The language model's decoder blocks are what the core's block finder (``automodel.blocks``) picks from the
model's ``_no_split_modules``: FSDP2 shards them one by one (and the vision tower's encoder layers), the
``activation_checkpointing`` transform recomputes them. LoRA is confined to the language model by default:
the loader sets ``model.automodel_lora_exclude`` (a regular expression over module names), which the ``lora``
transform uses as its ``exclude_modules`` when the config gives none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from automodel.builtin.models import missing_local_paths
from automodel.errors import AutomodelError, did_you_mean
from automodel.weights import init_weights

#: Module names of the vision-to-text projector in transformers' VLMs (Llava, Gemma 3, Mistral 3: the first;
#: Idefics3 / SmolVLM: connector; Qwen2-VL / 2.5-VL: visual.merger, inside the vision tower).
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "mm_projector", "merger", "vision_projection", "embed_vision")


def hf_vlm(
    ctx: Any,
    pretrained: str | None = None,
    config: dict | None = None,
    processor: str | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    freeze_vision_tower: bool = False,
    freeze_projector: bool = False,
    lora_scope: Literal["language_model", "all"] = "language_model",
) -> tuple[Any, Any]:
    """Load ``AutoModelForImageTextToText`` and its ``AutoProcessor``.

    Give either ``pretrained`` (a local directory or a hub id) or ``config`` (a dict with ``model_type``
    and the architecture's fields, ``vision_config`` / ``text_config`` as dicts, for a randomly
    initialized model seeded by ``seed``) together with ``processor`` (a directory or hub id that
    ``AutoProcessor`` loads). ``processor`` also overrides the processor of a ``pretrained`` model.

    ``freeze_vision_tower`` / ``freeze_projector``: no gradients for the vision encoder / the
    vision-to-text projector (they are still sharded and exported). ``lora_scope``: ``language_model``
    (default) keeps LoRA adapters off the vision tower and projector when the ``lora`` transform's
    ``exclude_modules`` is not set; ``all`` leaves the choice to ``target_modules``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch_dtype = getattr(torch, dtype)
    if pretrained:
        model_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        model_config.name_or_path = pretrained
    else:
        spec = dict(config or {})
        model_type = spec.pop("model_type", None)
        _check_model_type(model_type)
        model_config = AutoConfig.for_model(model_type, **spec)
    _check_image_text(model_config, pretrained or "model.config")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    proc = load_processor(processor or pretrained, trust_remote_code)
    tok = proc.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # what code written for tokenizers reads (the core's builtin collator: pad_token_id); instance
    # attributes, so save_pretrained does not write them
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if not hasattr(proc, attr):
            setattr(proc, attr, getattr(tok, attr))
    vocab = model_config.get_text_config().vocab_size
    if len(tok) > vocab:
        raise AutomodelError(
            f"model: the processor's tokenizer has {len(tok)} tokens but the language model's vocab_size is {vocab}; "
            "use the model's own processor or raise model.config.text_config.vocab_size"
        )

    model = None
    if ctx.meta_init:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            model = AutoModelForImageTextToText.from_config(model_config, dtype=torch_dtype, **kwargs)
        model.config.name_or_path = pretrained or ""
        if pretrained and not _files_match(model, pretrained):
            # transformers writes many VLMs under their legacy names (language_model.model.*) and renames
            # them while loading; the core's sharded load reads the files by the model's own names
            ctx.print(f"vlm: {pretrained} stores its weights under other names than the model's (transformers' "
                      "legacy layout), so each process loads the whole model before it is sharded")
            model = None
    if model is None and pretrained:
        model = AutoModelForImageTextToText.from_pretrained(pretrained, config=model_config, dtype=torch_dtype, **kwargs)
    elif model is None:
        model = AutoModelForImageTextToText.from_config(model_config, dtype=torch_dtype, **kwargs)
        init_weights(model, ctx.config.get("seed", 0))  # the same start for any layout (see automodel.weights)

    parts = model_parts(model)
    frozen = []
    if freeze_vision_tower:
        frozen += _freeze(parts["vision_tower"], "freeze_vision_tower", "vision tower", model)
    if freeze_projector:
        frozen += _freeze(parts["projector"], "freeze_projector", "projector", model)
    if lora_scope == "language_model":
        model.automodel_lora_exclude = lora_exclude_regex(model, parts["language_model"])
    if not any(p.is_meta for p in model.parameters()):
        model.to(ctx.device)
    ctx.print(describe(model, proc, parts, frozen))
    return model, proc


def _files_match(model: Any, pretrained: str) -> bool:
    """Every weight of ``model`` is in the safetensors files of the local directory ``pretrained`` under
    its own name (what the core's meta-device load needs); False for a hub id or other names."""
    from safetensors import safe_open

    files = sorted(Path(pretrained).expanduser().glob("*.safetensors")) if Path(pretrained).expanduser().is_dir() else []
    if not files:
        return False
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            names.update(h.keys())
    return {n for n, _ in model.named_parameters()} <= names  # tied weights: under their first name


# --------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------


def load_processor(source: str | None, trust_remote_code: bool = False) -> Any:
    """``AutoProcessor.from_pretrained(source)``; an error when it gives a bare tokenizer (no image processor)."""
    from transformers import AutoProcessor
    from transformers.processing_utils import ProcessorMixin

    if not source:
        raise AutomodelError("model.processor: a model built from 'config' needs a processor directory or hub id")
    try:
        proc = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise AutomodelError(f"model: cannot load a processor from {source}: {str(e).splitlines()[0]}\n"
                             "    -> hf_vlm needs processor_config.json / preprocessor_config.json next to the tokenizer; "
                             "set model.processor to a directory saved with processor.save_pretrained()") from e
    if not isinstance(proc, ProcessorMixin) or getattr(proc, "image_processor", None) is None:
        raise AutomodelError(
            f"model: {source} has a {type(proc).__name__}, not a processor with an image processor: it is a text-only "
            "model's tokenizer. Use model.name: hf for text-only models, or set model.processor to a vision-language "
            "processor directory (processor_config.json + preprocessor_config.json + tokenizer files)"
        )
    return proc


def image_token_id(processor: Any) -> int | None:
    """The id of the processor's image placeholder token (``<image>``, ``<|image_pad|>``, ...)."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None):
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return tid


# --------------------------------------------------------------------------------------------------
# The parts of a VLM
# --------------------------------------------------------------------------------------------------


def model_parts(model: Any) -> dict[str, Any]:
    """``vision_tower``, ``projector`` and ``language_model`` modules of a transformers VLM (``None``
    where the model has no such part)."""
    vision = model.get_encoder(modality="image") if hasattr(model, "get_encoder") else None
    if vision is model or vision is getattr(model, "model", None):
        vision = None
    language = model.get_decoder() if hasattr(model, "get_decoder") else None
    if language is model:
        language = None
    projector = None
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTOR_NAMES and not _inside(model, module, language):
            projector = module
            break
    return {"vision_tower": vision, "projector": projector, "language_model": language}


def _inside(model: Any, module: Any, parent: Any) -> bool:
    return parent is not None and any(m is module for m in parent.modules())


def _freeze(module: Any, key: str, what: str, model: Any) -> list[str]:
    if module is None:
        raise AutomodelError(f"model.{key}: {type(model).__name__} has no {what} that automodel recognizes; "
                             f"leave {key} off (known names: vision_tower/visual/vision_model; {', '.join(PROJECTOR_NAMES)})")
    module.requires_grad_(False)
    return [what]


def module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def lora_exclude_regex(model: Any, language: Any) -> str | None:
    """A regular expression (``re.fullmatch`` over module names, as peft's ``exclude_modules``) for every
    module outside the language model: LoRA then adapts the language model only."""
    if language is None:
        return None
    return rf"(?!{re.escape(module_name(model, language))}\.).*"


def describe(model: Any, processor: Any, parts: dict[str, Any], frozen: list[str]) -> str:
    def size(m: Any) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" if m is not None else "-"

    tid = image_token_id(processor)
    seq = getattr(processor, "image_seq_length", None) or getattr(processor, "num_image_tokens", None)
    text = [f"vlm: {type(model).__name__}"]
    for key, label in (("vision_tower", "vision tower"), ("projector", "projector"), ("language_model", "language model")):
        m = parts[key]
        if m is not None:
            text.append(f"{label} {type(m).__name__} {size(m)}{' (frozen)' if label in frozen else ''}")
    token = getattr(processor, "image_token", None)
    if token:
        text.append(f"image token {token!r} (id {tid})" + (f", {seq} per image" if seq else ""))
    return "; ".join(text)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _check_model_type(model_type: str | None) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not model_type:
        raise AutomodelError("model.config.model_type: missing (e.g. model_type: llava)")
    if model_type not in CONFIG_MAPPING:
        close = did_you_mean(model_type, CONFIG_MAPPING.keys())
        raise AutomodelError(f"model.config.model_type: unknown model type {model_type!r}"
                             + (f"; did you mean {close!r}?" if close else ""))


def _check_image_text(model_config: Any, source: str) -> None:
    """A clear error for a config that ``AutoModelForImageTextToText`` cannot build (a text-only model)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(model_config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return
    kind = "a text-only model" if type(model_config) in MODEL_FOR_CAUSAL_LM_MAPPING else "not an image-text-to-text model"
    raise AutomodelError(
        f"model: {source} is a {model_config.model_type!r} model, {kind}: AutoModelForImageTextToText cannot load it.\n"
        "    -> use model.name: hf for a text-only model, or a vision-language model here (llava, qwen2_5_vl, gemma3, "
        "idefics3, mistral3, ...)"
    )


def _validate(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    if args.get("dtype") == "float16":
        out.append(("dtype", "float16 weights overflow in training without loss scaling, which automodel does not do",
                    "use bfloat16 (or float32)"))
    pretrained, config = args.get("pretrained"), args.get("config")
    if bool(pretrained) == bool(config):
        out.append(("", "give exactly one of 'pretrained' (path or hub id) or 'config' (a dict with model_type)",
                    "e.g. pretrained: ./my-vlm"))
    if config and "model_type" not in config:
        out.append(("config.model_type", "missing", "e.g. model_type: llava"))
    if config and not args.get("processor"):
        out.append(("processor", "a model built from 'config' needs a processor directory or hub id",
                    "e.g. processor: ./processor (saved with processor.save_pretrained)"))
    out += missing_local_paths(args, ("pretrained", "processor"))
    return out


def _model_config(args: dict[str, Any]) -> dict[str, Any] | None:
    """The language model's architecture fields before launch (``text_config`` of ``config`` or of a local
    ``pretrained`` directory's config.json): what tp and ep check against."""
    from automodel.architecture import config_json_fields

    return config_json_fields(args.get("config"), args.get("pretrained"))


def _tokenizer_dir(args: dict[str, Any]) -> str | None:
    """The processor's directory (its tokenizer files): ``processor``, else ``pretrained`` (when local)."""
    from automodel.architecture import local_dir

    return local_dir(args.get("processor") or args.get("pretrained"))


hf_vlm.validate_args = _validate  # type: ignore[attr-defined]
hf_vlm.path_args = ("pretrained", "processor")  # type: ignore[attr-defined]
hf_vlm.model_config = _model_config  # type: ignore[attr-defined]
hf_vlm.tokenizer_dir = _tokenizer_dir  # type: ignore[attr-defined]
