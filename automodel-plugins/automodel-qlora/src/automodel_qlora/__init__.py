"""automodel-qlora: QLoRA, a quantized (NF4 / FP4 / int8) frozen base with trainable LoRA adapters.

    model:      {name: hf_quantized, pretrained: ./my-model, bits: 4, quant_type: nf4, double_quant: true}
    transforms: [{name: qlora, r: 16, alpha: 32, target_modules: all-linear}]

The ``hf_quantized`` model loader quantizes the pretrained weights while loading them (bitsandbytes,
layer by layer, or torchao's FSDP2-aware ``NF4Tensor``) and prepares the model for k-bit training; the
``qlora`` transform is the ``lora`` transform of automodel-lora (same keys) on that base, whose export
writes the adapter that plain ``peft`` loads on the original base and, optionally, the merged model
dequantized to the base dtype. Registration only: nothing here imports torch.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_model_loaders(register):
    register(
        "hf_quantized",
        "automodel_qlora.loader:hf_quantized",
        description="transformers causal LM loaded in 4-bit NF4/FP4 or 8-bit (bitsandbytes, torchao) for QLoRA",
    )


@hookimpl
def register_model_transforms(register):
    register(
        "qlora",
        "automodel_qlora.transform:QLoRA",
        description="LoRA adapters on a quantized base (hf_quantized); exports the adapter (+ dequantized merged model)",
    )


def check_requirements() -> list[str]:
    """``automodel plugins --check``: a quantization backend that is installed but does not import, or
    none installed at all."""
    import importlib.util

    from automodel_qlora.backends import BACKENDS, import_problem

    installed = [b for b in BACKENDS if importlib.util.find_spec(BACKENDS[b].module) is not None]
    if not installed:
        return ["no quantization backend is installed: pip install 'automodel-qlora[bitsandbytes]' "
                "(or [torchao] for NF4 under FSDP2)"]
    return [p for b in installed if (p := import_problem(b))]
