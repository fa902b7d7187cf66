"""``sdpa_packed``: attention that keeps the samples of a packed row apart without a dense mask.

With ``sdpa`` or ``eager`` attention, transformers turns a packed row (``position_ids`` restarting at 0
for each sample, no ``attention_mask``) into a dense ``[rows, 1, tokens, tokens]`` block-diagonal mask,
and SDPA then computes every query against every key of the row and throws most of it away: a row of
2048 tokens holding 17 samples of ~120 tokens does ~15x the attention work the samples need, and the
masked kernel is slower than the causal one besides. FlexAttention's block masks would skip that work,
but its backward does not run on CPU (torch 2.13); ``torch.nn.attention.varlen`` and flash-attention's
varlen kernels are CUDA-only.

``sdpa_packed`` (``model.attn_implementation: sdpa_packed``) reads the sample boundaries from
``position_ids`` (a new sample wherever the position does not go up by one, as transformers detects
packing) and runs causal SDPA once per sample: the work is the samples' own. Everything else (a padding
mask, decoding with a cache, a non-causal module, sliding-window models) goes to transformers' own
``sdpa`` path with its mask, so results are those of ``sdpa`` everywhere (tested). On GPU prefer
``flash_attention_2``: transformers runs its varlen kernel from the same ``position_ids``.

:func:`register` adds the name to transformers' ``AttentionInterface`` (and a mask function to
``AttentionMaskInterface`` that builds no mask where the attention function needs none); the core
calls it before the model loader runs when the model section names ``sdpa_packed``. The name is not
written into an exported ``config.json``: exported models load with transformers' default attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "sdpa_packed"


def sample_spans(position_ids: torch.Tensor, rows: int) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, end)`` token spans of its samples: a sample starts at token 0 and wherever
    the position does not go up by one (``position_ids`` of shape ``[rows or 1, tokens]``)."""
    pos = position_ids.expand(rows, -1)
    n = pos.shape[1]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    idx = starts.nonzero().tolist()  # one host sync per attention call
    out: list[list[int]] = [[] for _ in range(rows)]
    for r, t in idx:
        out[r].append(t)
    return [list(zip(s, [*s[1:], n])) for s in out]


def _windowed(config: Any) -> bool:
    return bool(getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None))


def packed_sdpa_mask(*, attention_mask: torch.Tensor | None = None, config: Any = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for rows without padding (causal or packed: :func:`packed_sdpa_attention` reads the
    samples from ``position_ids``); transformers' ``sdpa`` mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and not _windowed(config):
        return None
    return sdpa_mask(attention_mask=attention_mask, config=config, **kwargs)


@torch.compiler.disable  # a compiled block runs this eagerly: the sample boundaries differ from batch to batch
def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA per sample of each row (``query``: ``[rows, heads, tokens, dim]``); transformers'
    ``sdpa_attention_forward`` wherever a mask, a cache or a non-causal module is involved."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    rows, _, n, _ = query.shape
    if (attention_mask is not None or not causal or position_ids is None or n == 1 or key.shape[2] != n
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    spans = sample_spans(position_ids, rows)
    if all(len(s) == 1 for s in spans):  # nothing packed: one causal call
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # Split, not slice: the backward of a split concatenates the samples' gradients, while each slice's
    # backward would allocate a zero-filled tensor the size of the whole row and add it in (a step 1.1x
    # slower on 2 x 1920-token rows of ~12 samples each).
    outs = []
    for q_row, k_row, v_row, row in zip(query.split(1), key.split(1), value.split(1), spans):
        sizes = [e - s for s, e in row]
        outs.append(torch.cat([F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
                               for q, k, v in zip(q_row.split(sizes, 2), k_row.split(sizes, 2), v_row.split(sizes, 2))],
                              dim=2))
    out = torch.cat(outs)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="sdpa_packed"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, packed_sdpa_mask)
