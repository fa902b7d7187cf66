"""automodel-vlm: vision-language fine-tuning.

    model:   {name: hf_vlm, pretrained: ./my-vlm, freeze_vision_tower: true}
    dataset: {name: image_chat, path: data/train.jsonl}

Registration only: nothing here imports torch, transformers or Pillow.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_model_loaders(register):
    register(
        "hf_vlm",
        "automodel_vlm.model:hf_vlm",
        description="transformers AutoModelForImageTextToText + AutoProcessor (path, hub id or config); freeze vision/projector",
    )


@hookimpl
def register_datasets(register):
    register(
        "image_chat",
        "automodel_vlm.data:image_chat",
        description="image + text conversations (jsonl with image paths, or a datasets Image column); loss on assistant turns",
    )


def check_requirements() -> list[str]:
    """What ``automodel plugins --check`` reports as missing."""
    import importlib.util

    out = []
    if importlib.util.find_spec("PIL") is None:
        out.append("Pillow is not installed (images cannot be read): pip install Pillow")
    return out
