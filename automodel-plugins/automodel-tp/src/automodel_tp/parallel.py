"""The ``tp`` parallelizer: shard a Hugging Face decoder LLM over the ``tp`` mesh dimension."""

from __future__ import annotations

from collections import Counter
from typing import Any

from automodel.errors import AutomodelError

from automodel_tp.validate import head_problems


class TensorParallel:
    """Tensor parallelism with ``torch.distributed.tensor.parallel``.

    * ``size``: ranks per tensor-parallel group (``None``: every rank the other parallelizers leave).
    * ``sequence_parallel``: norms (and the residual stream) work on sequence shards, attention and MLP
      all-gather / reduce-scatter around them: activation memory drops by ``size``.
    * ``loss_parallel``: the lm_head output stays sharded over the vocabulary and the builtin
      ``masked_ce`` loss computes on the shards (no full-vocabulary logits on any rank).
    * ``plan``: ``{module-name glob: style}``, laid over the model's own plan (transformers
      ``_tp_plan``, else the plugin's Llama-family plan). Styles: see :data:`automodel_tp.plans.STYLES`.
    * ``meta_init``: build the model on the meta device, shard it, then let the core load only this
      rank's shards (no rank ever holds the full model). FSDP2 turns it on for the whole run anyway.
    """

    dim = "tp"

    def __init__(
        self,
        size: int | None = None,
        sequence_parallel: bool = False,
        loss_parallel: bool = False,
        plan: dict[str, str] | None = None,
        meta_init: bool = False,
    ):
        self.meta_init = meta_init
        self.size = size
        self.sequence_parallel = sequence_parallel
        self.loss_parallel = loss_parallel
        self.plan = dict(plan or {})

    # -- before launch ------------------------------------------------------------------------------

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Unknown style names in ``plan``, without importing torch."""
        from automodel_tp.styles import STYLE_NAMES

        out = []
        for pattern, style in (args.get("plan") or {}).items():
            if style not in STYLE_NAMES:
                out.append((f"plan.{pattern}", f"unknown style '{style}'", f"use one of: {', '.join(STYLE_NAMES)}"))
        return out

    def validate_model(self, model_cfg: dict[str, Any], architecture: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """Attention heads and KV heads must split evenly over ``size`` ranks (checked before launch when
        the model's loader declares its architecture; else when the model is built)."""
        if not self.size or self.size == 1 or not architecture:
            return []
        return head_problems(architecture, self.size)

    # -- in each process ------------------------------------------------------------------------------

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch.distributed.tensor.parallel import parallelize_module

        from automodel_tp import plans

        tp_mesh = mesh[self.dim]
        size = tp_mesh.size()
        hf = _base_model(model)
        config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        problems = head_problems(config.to_dict(), size)
        if problems:
            raise AutomodelError("; ".join(f"parallel.tp: {m} ({h})" for m, h in problems))

        names = {id(m): n for n, m in hf.named_modules()}
        out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
        lm_head = names.get(id(out_emb)) if out_emb is not None else None
        tied = out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight

        plan, source, unused = plans.resolve(hf, lm_head, self.sequence_parallel, self.loss_parallel, self.plan)
        if unused:
            raise AutomodelError(
                f"parallel.tp.plan: pattern(s) {unused} match no module of {type(hf).__name__}; "
                f"module names look like {[n for n in list(names.values())[1:4]]}"
            )
        if self.sequence_parallel and "shard_sequence" not in plan.values():
            raise AutomodelError(
                f"parallel.tp.sequence_parallel: no Llama-style decoder layers ('model.layers.0') in {type(hf).__name__}; "
                "give the sequence-parallel styles in parallel.tp.plan or turn sequence_parallel off"
            )
        styles = {}
        for name, style in plan.items():
            factory = plans.STYLES.get(style)
            if factory is None:
                raise AutomodelError(f"parallel.tp: unknown style '{style}' for '{name}' (from {source}); "
                                     f"use parallel.tp.plan to give one of {sorted(plans.STYLES)}")
            styles.update(_lora_aware(hf, name, style, factory))
        frozen = {n for n, p in hf.named_parameters() if not p.requires_grad}
        parallelize_module(hf, tp_mesh, styles)

        # Whatever the plan leaves whole (norms, ...) becomes replicated DTensors too: gradient clipping
        # and optimizers need one kind of tensor, and FSDP2 then shards every parameter on a 2-D mesh.
        from torch.distributed.tensor import DTensor

        for module in hf.modules():
            if any(not isinstance(p, DTensor) for p in module.parameters(recurse=False)):
                parallelize_module(module, tp_mesh, plans.STYLES["replicate"]())
        for n, p in hf.named_parameters():  # some torch styles (SequenceParallel) make new, trainable parameters
            if n in frozen:
                p.requires_grad_(False)
        if tied:
            _retie(hf, lm_head, names.get(id(in_emb)))
        if self.sequence_parallel:
            _pad_sequence_to_multiple(hf, size)
        if ctx.is_main:
            sp = ", sequence parallel" if self.sequence_parallel else ""
            lp = ", loss parallel" if self.loss_parallel else ""
            counts = Counter(plan.values())
            print(f"tp: {size} ranks, plan from {source}{' + overrides' if self.plan else ''}{sp}{lp}: "
                  + ", ".join(f"{style} x{n}" for style, n in counts.items()), flush=True)
        return model


def _base_model(model: Any) -> Any:
    """The transformers model inside wrappers (PEFT, DDP)."""
    from automodel.weights import unwrap

    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return unwrap(model)


def _lora_aware(hf: Any, name: str, style: str, factory: Any) -> dict[str, Any]:
    """Styles for one plan entry. A PEFT LoRA layer (``base_layer`` + ``lora_A``/``lora_B``) is split:
    the base layer takes the style; for a colwise layer A stays whole and B is colwise, for a rowwise
    layer A is rowwise and B stays whole (fed sequence shards under sequence parallelism, so its
    gradient is summed over the ranks)."""
    from automodel_tp import plans

    module = hf.get_submodule(name)
    if not (hasattr(module, "base_layer") and hasattr(module, "lora_A")):
        return {name: factory()}
    if any(len(d) for d in (getattr(module, "lora_magnitude_vector", None) or {},)):
        raise AutomodelError(f"parallel.tp: DoRA adapters ('{name}') are not supported with tensor parallelism; "
                             "use LoRA (use_dora: false)")
    if style.startswith("colwise"):
        a_style, b_style = (lambda: plans.ReplicateParallel()), factory
    elif style.startswith("rowwise"):
        sharded_seq = style == "rowwise_sequence_output"
        a_style, b_style = factory, (lambda: plans.ReplicateParallel(input_dim=1 if sharded_seq else None))
    else:
        raise AutomodelError(f"parallel.tp: style '{style}' of '{name}' is not supported on a LoRA layer; "
                             "use colwise/rowwise styles or leave the module out of the LoRA targets")
    out = {f"{name}.base_layer": factory()}
    for adapter in module.lora_A:
        out[f"{name}.lora_A.{adapter}"] = a_style()
        out[f"{name}.lora_B.{adapter}"] = b_style()
    return out


def _retie(hf: Any, lm_head: str | None, embed: str | None) -> None:
    """Parallelizing replaced the shared weight with two DTensors: share one again."""
    out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out_emb.weight.placements != in_emb.weight.placements:
        raise AutomodelError(
            f"parallel.tp: the model ties '{lm_head}' to '{embed}' but the plan shards them differently "
            f"({out_emb.weight.placements} vs {in_emb.weight.placements}); give both the same split "
            "(colwise lm_head with embedding_rowwise embeddings)"
        )
    out_emb.weight = in_emb.weight


def _pad_sequence_to_multiple(hf: Any, multiple: int) -> None:
    """Sequence parallelism splits the sequence evenly: pad the inputs at the end to a multiple of the
    TP size (padding is masked out, and causal attention keeps real tokens from seeing it) and trim the
    logits back."""
    import torch

    def pad(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ids = kwargs.get("input_ids")
        if ids is None or ids.shape[1] % multiple == 0:
            return None
        n = ids.shape[1]
        extra = multiple - n % multiple
        pad_id = getattr(hf.config, "pad_token_id", None) or 0
        kwargs = dict(kwargs)
        kwargs["input_ids"] = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        if kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = torch.nn.functional.pad(kwargs["attention_mask"], (0, extra), value=0)
        if kwargs.get("position_ids") is not None:
            pos = kwargs["position_ids"]
            kwargs["position_ids"] = torch.cat([pos, pos[:, -1:] + torch.arange(1, extra + 1, device=pos.device)], dim=1)
        module._automodel_tp_trim = n
        return args, kwargs

    def trim(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        n = getattr(module, "_automodel_tp_trim", None)
        if n is None:
            return None
        module._automodel_tp_trim = None
        if getattr(output, "logits", None) is not None:
            output.logits = output.logits[:, :n]
        return output

    hf.register_forward_pre_hook(pad, with_kwargs=True)
    hf.register_forward_hook(trim, with_kwargs=True)
