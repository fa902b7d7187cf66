"""Bytes of a model's parameters, counting what quantized weights really hold (packed data, scales,
double-quantization state), and a one-line description of how a model is quantized."""

from __future__ import annotations

from typing import Any

from automodel_qlora.backends import is_nf4, quantized_layers


def tensor_bytes(t: Any) -> int:
    """Storage bytes of ``t``: a bitsandbytes ``Params4bit`` with its quantization state (absmax, code and
    the nested state of double quantization), an ``Int8Params`` with its row scales, an ``NF4Tensor`` with
    its inner tensors, or an ordinary tensor."""
    if type(t).__name__ == "DTensor":
        t = t._local_tensor
    if is_nf4(t):
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in inner)
    n = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    if state is not None:
        n += _state_bytes(state)
    scb = getattr(t, "SCB", None)
    if scb is not None:
        n += scb.numel() * scb.element_size()
    return n


def _state_bytes(state: Any) -> int:
    n = 0
    for name in ("absmax", "code"):
        value = getattr(state, name, None)
        if value is not None:
            n += value.numel() * value.element_size()
    nested = getattr(state, "state2", None)
    return n + (_state_bytes(nested) if nested is not None else 0)


def base_bytes(model: Any, unquantized_dtype: Any = None) -> int:
    """Bytes of the frozen (base) parameters of ``model``; with ``unquantized_dtype``, what they would take
    unquantized in that dtype (the comparison the loader prints)."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            continue
        if unquantized_dtype is None:
            total += tensor_bytes(p)
        else:
            import torch

            numel = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)  # Params4bit packs 2 values a byte
            if getattr(p, "quant_state", None) is not None:
                numel = _prod(p.quant_state.shape)
            total += numel * torch.empty((), dtype=unquantized_dtype).element_size()
    return total


def _prod(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def describe_quantization(model: Any, backend: str, bits: int, quant_type: str, double_quant: bool, compute: str) -> str:
    layers = quantized_layers(model)
    what = "8-bit LLM.int8" if bits == 8 else f"4-bit {quant_type.upper()}" + (" with double quantization" if double_quant or backend == "torchao" else "")
    return f"{what} ({backend}, compute in {compute}) on {len(layers)} linear layers"
