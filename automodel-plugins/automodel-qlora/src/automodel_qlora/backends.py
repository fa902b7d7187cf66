"""The two quantization backends: what each supports, how to check it is usable, and the tensor-level
operations the loader and the export need (quantize, find quantized layers, dequantize).

* ``bitsandbytes``: ``transformers``' ``BitsAndBytesConfig`` quantizes while ``from_pretrained`` loads,
  layer by layer, so the full-precision model never sits on the device. 4-bit NF4 or FP4 (optionally
  double-quantized scales, any compute dtype) and 8-bit (LLM.int8). Layers become ``bnb.nn.Linear4bit``
  / ``Linear8bitLt`` with ``Params4bit`` / ``Int8Params`` weights, which FSDP2 cannot shard correctly.
* ``torchao``: the weights of the ``nn.Linear`` layers become ``torchao``'s ``NF4Tensor`` (4-bit NF4,
  double-quantized scales; the matmul runs in the activations' dtype). ``NF4Tensor`` implements FSDP2's
  all-gather extension, so an FSDP2 run shards the 4-bit weights themselves.

Nothing here imports torch at module import.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

# torchao moved NF4 out of torchao.dtypes (0.18: quantization/quantize_/workflows/nf4); try both homes
TORCHAO_NF4_MODULES = ("torchao.quantization.quantize_.workflows.nf4.nf4_tensor", "torchao.dtypes.nf4tensor")


@dataclass(frozen=True)
class Backend:
    module: str       # import name
    extra: str        # pip extra of automodel-qlora
    bits: tuple[int, ...]
    quant_types: tuple[str, ...]
    fsdp2: bool       # composes with the fsdp2 parallelizer (tested on 2 gloo processes)


BACKENDS = {
    "bitsandbytes": Backend("bitsandbytes", "bitsandbytes", (4, 8), ("nf4", "fp4"), fsdp2=False),
    "torchao": Backend("torchao", "torchao", (4,), ("nf4",), fsdp2=True),
}


def install_hint(backend: str) -> str:
    return f"pip install 'automodel-qlora[{BACKENDS[backend].extra}]'"


def import_problem(backend: str) -> str | None:
    """Why ``backend`` cannot be used here (not installed, fails to import), or None."""
    spec = BACKENDS[backend]
    if importlib.util.find_spec(spec.module) is None:
        return f"{backend} is not installed; {install_hint(backend)}"
    try:
        if backend == "torchao":
            nf4_module()
        else:
            importlib.import_module(spec.module)
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return f"{backend} is installed but fails to import ({type(e).__name__}: {e}); reinstall it for this torch ({install_hint(backend)})"
    return None


def nf4_module() -> Any:
    """torchao's NF4 module (``to_nf4``, ``NF4Tensor``), wherever this torchao version keeps it."""
    errors = []
    for name in TORCHAO_NF4_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("torchao's NF4 tensor not found (" + "; ".join(errors) + ")")


# --------------------------------------------------------------------------------------------------
# torchao: quantize nn.Linear weights to NF4Tensor
# --------------------------------------------------------------------------------------------------

NF4_BLOCK = 64  # values per absmax scale (QLoRA paper and bitsandbytes use 64)


def scaler_block_size(numel: int, shards: int = 1) -> int | None:
    """Values per block of the (double-quantized) scales: torchao's default 256 or the largest smaller
    power of two that leaves a multiple of 8 blocks, so that FSDP2 can split every inner tensor of the
    ``NF4Tensor`` over 1, 2, 4 or 8 ranks and the weights are quantized the same for any of these process
    counts (a run and its export in one process agree). Other counts: a multiple of ``shards`` blocks.
    None when the weight cannot be NF4-quantized that way."""
    if numel % NF4_BLOCK:
        return None
    scales = numel // NF4_BLOCK
    sizes = [size for size in (256, 128, 64, 32, 16, 8, 4, 2) if scales % size == 0]
    for size in sizes:
        if (scales // size) % 8 == 0 and (scales // size) % shards == 0:
            return size
    return next((size for size in sizes if (scales // size) % shards == 0), None)


def quantize_linears_nf4(model: Any, skip: list[str], device: Any, shards: int = 1) -> tuple[list[str], list[str]]:
    """Replace the weight of every ``nn.Linear`` of ``model`` (except the output head and modules named
    in ``skip``) by a frozen ``NF4Tensor`` on ``device``, one layer at a time; returns the quantized and
    the left-alone (incompatible shape) layer names."""
    import torch

    nf4 = nf4_module()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    done, kept = [], []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or _skipped(name, skip):
            continue
        block = scaler_block_size(module.weight.numel(), shards)
        if block is None:
            kept.append(name)
            continue
        weight = module.weight.detach().to(device)
        module.weight = torch.nn.Parameter(nf4.to_nf4(weight, NF4_BLOCK, block), requires_grad=False)
        done.append(name)
    return done, kept


def _skipped(name: str, skip: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skip)


# --------------------------------------------------------------------------------------------------
# Quantized layers of a model, and their dequantized weights
# --------------------------------------------------------------------------------------------------


def quantized_kind(module: Any) -> str | None:
    """``"bnb-4bit"``, ``"bnb-8bit"``, ``"nf4"`` (torchao) for a quantized linear layer, else None."""
    cls = type(module).__name__
    if cls == "Linear4bit" and type(module).__module__.startswith("bitsandbytes"):
        return "bnb-4bit"
    if cls == "Linear8bitLt" and type(module).__module__.startswith("bitsandbytes"):
        return "bnb-8bit"
    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is not None and is_nf4(weight):
        return "nf4"
    return None


def is_nf4(tensor: Any) -> bool:
    local = tensor._local_tensor if type(tensor).__name__ == "DTensor" else tensor
    return type(local).__name__ == "NF4Tensor"


def quantized_layers(model: Any) -> dict[str, str]:
    """Full name -> kind of every quantized linear layer in ``model`` (peft ``base_layer`` included)."""
    return {name: kind for name, m in model.named_modules() if (kind := quantized_kind(m))}


def dequantized_weight(module: Any, weight: Any) -> Any:
    """The full-precision value of the quantized ``weight`` of ``module`` (a DTensor-sharded NF4 weight is
    gathered first: a collective, every rank must call it)."""
    kind = quantized_kind(module)
    if kind == "nf4":
        if type(weight).__name__ == "DTensor":
            weight = weight.full_tensor()
        return weight.get_original_weight()
    from peft.utils.integrations import dequantize_bnb_weight

    return dequantize_bnb_weight(weight, state=getattr(module, "state", None))
