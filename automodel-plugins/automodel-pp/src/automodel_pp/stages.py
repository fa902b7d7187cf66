"""Cutting a Hugging Face decoder model into pipeline stages (no torch at import).

A stage is a contiguous run of decoder blocks; the first stage also holds the token embeddings, the
last the final norm and the lm_head. This rank's model keeps only its stages' modules under their
original names (``model.layers.<i>`` stays ``model.layers.<i>``), so checkpoints, exports and
pretrained weights use the same keys at any pipeline size.
"""

from __future__ import annotations

from typing import Any

from automodel.errors import AutomodelError

#: schedule name -> (torch class, stages per rank: 1, or None = ``stages_per_rank`` (default 2), style)
SCHEDULES: dict[str, tuple[str, int | None, str]] = {
    "gpipe": ("ScheduleGPipe", 1, "loop"),
    "1f1b": ("Schedule1F1B", 1, "loop"),
    "interleaved_1f1b": ("ScheduleInterleaved1F1B", None, "loop"),
    "interleaved_zb": ("ScheduleInterleavedZeroBubble", None, "loop"),
    "zbv": ("ScheduleZBVZeroBubble", 2, "v"),
}


def stages_per_rank(schedule: str, requested: int | None) -> int:
    fixed = SCHEDULES[schedule][1]
    return fixed if fixed is not None else (requested or 2)


def stage_owner(stage: int, pp: int, style: str) -> int:
    """The pipeline rank that runs ``stage``: round robin (``loop``), or there and back (``v``: rank 0
    holds the first and the last stage)."""
    if style == "v":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def balanced_bounds(n_layers: int, n_stages: int, last_extra: float = 0.0) -> list[int]:
    """Stage boundaries ``[0, b1, ..., n_layers]`` of contiguous blocks that minimize the largest stage
    cost: a block costs 1, the last stage ``last_extra`` more (the lm_head and the loss, in blocks)."""
    if n_stages > n_layers:
        raise AutomodelError(f"pp: {n_stages} stages need at least {n_stages} decoder blocks; the model has {n_layers}")
    best: dict[tuple[int, int], tuple[float, list[int]]] = {}

    def solve(start: int, stages: int) -> tuple[float, list[int]]:
        if (start, stages) in best:
            return best[(start, stages)]
        if stages == 1:
            out = (n_layers - start + last_extra, [n_layers])
        else:
            out = (float("inf"), [])
            for end in range(start + 1, n_layers - stages + 2):
                rest, bounds = solve(end, stages - 1)
                cost = max(end - start, rest)
                if cost < out[0]:
                    out = (cost, [end, *bounds])
        best[(start, stages)] = out
        return out

    return [0, *solve(0, n_stages)[1]]


def explicit_bounds(split_points: list[int], n_layers: int, n_stages: int) -> list[int]:
    """``split_points`` (the first block of every stage but the first) as stage boundaries."""
    bounds = [0, *split_points, n_layers]
    if len(split_points) != n_stages - 1:
        raise AutomodelError(f"pp.split_points: {n_stages} stages need {n_stages - 1} split points, got {len(split_points)}")
    if any(b >= a for a, b in zip(bounds[1:], bounds)) or bounds != sorted(bounds):
        raise AutomodelError(f"pp.split_points: {split_points} must increase strictly within 1..{n_layers - 1} "
                             f"(the model has {n_layers} decoder blocks)")
    return bounds


def decoder_parts(model: Any) -> tuple[Any, Any]:
    """(causal LM, its decoder) of a Hugging Face decoder model, with the parts a stage needs."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    missing = [n for n in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(decoder, n)]
    if decoder is None or missing or not hasattr(model, "lm_head"):
        raise AutomodelError(
            f"pp: {type(model).__name__} is not a decoder model the pipeline can split (it needs "
            "model.embed_tokens, model.layers, model.norm, model.rotary_emb and lm_head: Llama, Qwen2, Mistral families)"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + ". LoRA/PEFT-wrapped models are not supported with pp yet."
        )
    return model, decoder


def keep_stages(model: Any, bounds: list[int], mine: list[int], n_stages: int, tied: bool = False) -> None:
    """Drop every module this rank's stages (``mine``) do not run: blocks (kept under their own index
    in a ``ModuleDict``), the embeddings unless stage 0 is here (or, ``tied``, the last stage: the
    lm_head's weight then keeps its first name, ``model.embed_tokens.weight``, as in the whole model, so
    optimizer state and checkpoints use one name at any pipeline size), the final norm and lm_head
    unless the last stage is."""
    import torch

    _, decoder = decoder_parts(model)
    keep = [i for s in mine for i in range(bounds[s], bounds[s + 1])]
    decoder.layers = torch.nn.ModuleDict({str(i): decoder.layers[i] for i in keep})
    if 0 not in mine and not (tied and n_stages - 1 in mine):
        decoder.embed_tokens = None
    if n_stages - 1 not in mine:
        decoder.norm = None
        model.lm_head = None
