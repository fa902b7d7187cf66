"""Tiny, offline vision-language assets for tests and the CPU example: a character-level processor
(tokenizer + CLIP image processor + chat template), a tiny Llava config, and a coloured-shapes task.

    from automodel_vlm.testing import char_processor, tiny_vlm, write_shapes

    processor_dir = char_processor().save_pretrained(tmp / "processor") or tmp / "processor"
    model_dir = tiny_vlm(tmp)                     # a random tiny Llava + its processor, from_pretrained-able
    write_shapes(tmp / "data", n=64)              # data/train.jsonl + data/images/*.png
"""

from __future__ import annotations

import json
import os
import random
import string
from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHARS = list(string.ascii_lowercase + string.digits + " :\n.,?!-")
VOCAB_SIZE = len(SPECIALS) + len(CHARS)  # 49
IMAGE_TOKEN_ID = SPECIALS.index("<image>")

#: A chat template for the character processor: "u:<image>what colour?\n" then "a:red</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'][0] }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}a:{% endif %}"
)


def tiny_llava_config(image_size: int = 32, patch_size: int = 8, vision_hidden: int = 64, text_hidden: int = 128,
                      vision_layers: int = 2, text_layers: int = 2) -> dict[str, Any]:
    """``model.config`` of a tiny Llava (CLIP vision tower + Llama), ~0.4M parameters by default."""
    return {
        "model_type": "llava",
        "image_token_id": IMAGE_TOKEN_ID,
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -1,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": True,
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
            "num_hidden_layers": vision_layers, "num_attention_heads": 4, "image_size": image_size,
            "patch_size": patch_size, "projection_dim": vision_hidden,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden, "num_hidden_layers": text_layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        },
    }


def char_processor(image_size: int = 32, patch_size: int = 8) -> Any:
    """A ``LlavaProcessor``: character tokenizer (``<image>`` is one token), CLIP image processor
    resizing to ``image_size``, and :data:`CHAT_TEMPLATE`. Built in memory, offline."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    try:  # the PIL backend by name: without torchvision the default class warns and falls back to it
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>", chat_template=CHAT_TEMPLATE)


def save_processor(directory: str | os.PathLike[str], **kwargs: Any) -> Path:
    """:func:`char_processor` saved to ``directory`` (``AutoProcessor.from_pretrained`` loads it)."""
    import logging

    out = Path(directory)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    char_processor(**kwargs).save_pretrained(out)
    return out


def tiny_vlm(directory: str | os.PathLike[str], seed: int = 0, **config: Any) -> Path:
    """A randomly initialized tiny Llava and its processor saved to ``directory/tiny-llava``."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    out = Path(directory) / "tiny-llava"
    spec = {**tiny_llava_config(), **config}
    model_type = spec.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **spec))
    model.save_pretrained(out)
    save_processor(out)
    return out


# --------------------------------------------------------------------------------------------------
# The coloured-shapes task
# --------------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"colour": "what colour is the shape?", "shape": "what shape is it?"}


def draw(shape: str, colour: str, rng: random.Random, size: int = 32, *, radius: tuple[float, float] | None = None,
         jitter: float = 0.0, scale: int = 1) -> Any:
    """A ``size`` x ``size`` PNG-able image: one filled circle, square or triangle of ``colour`` (each
    channel jittered by up to 20) on a light random background.

    Default: an integer half-width of ``size // 5`` to ``size // 3`` pixels, anywhere in the image. With
    ``radius=(lo, hi)``: a half-width drawn uniformly from it, the centre within ``jitter`` pixels of the
    image's centre on each axis (the example's task). ``scale > 1`` draws at ``scale`` times the size and
    downsamples (anti-aliased edges)."""
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (size * scale, size * scale), bg)
    if radius is None:
        r: float = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(int(r) + 1, size - int(r) - 2), rng.randint(int(r) + 1, size - int(r) - 2)
    else:
        r = rng.uniform(*radius)
        cx, cy = (size / 2 + rng.uniform(-jitter, jitter) for _ in range(2))
    r, cx, cy = r * scale, cx * scale, cy * scale
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    d = ImageDraw.Draw(image)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image if scale == 1 else image.resize((size, size), Image.Resampling.LANCZOS)


def write_shapes(directory: str | os.PathLike[str], n: int = 64, seed: int = 0, name: str = "train",
                 size: int = 32, both_questions: bool = False, **draw_args: Any) -> Path:
    """``directory/<name>.jsonl``: ``n`` images (``images/<name>_<i>.png``, paths relative to the file),
    each drawn by :func:`draw` (``draw_args``: ``radius``, ``jitter``, ``scale``) and asked one question
    (colour or shape, at random) with its one-word answer; with ``both_questions`` each image is asked
    both, in two records, and the records are shuffled. Deterministic for a given ``seed``."""
    rng = random.Random(seed)
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        kinds = sorted(QUESTIONS) if both_questions else [rng.choice(sorted(QUESTIONS))]
        rel = f"images/{name}_{i}.png"
        draw(shape, colour, rng, size, **draw_args).save(out / rel)
        for kind in kinds:
            records.append({
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[kind]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": colour if kind == "colour" else shape}]},
                ],
                "images": [rel],
            })
    if both_questions:
        rng.shuffle(records)
    path = out / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
