"""Rebuild the VLM example's shipped assets: a character-level Llava processor and the shapes task.

    python examples/vlm/make_assets.py [OUT_DIR] [--train N] [--patch-size P]

Writes processor/ (tokenizer with an <image> token, CLIP image processor at 32x32 with P x P patches,
chat template), data/train.jsonl + data/val.jsonl and their PNGs in data/images/: one large filled
circle, square or triangle of one of four colours per 32x32 image (drawn at 4x and downsampled, so
edges are anti-aliased), random size, position and background; every image is asked both questions
(its colour and its shape) in two records. Deterministic: running it again writes identical files.
OUT_DIR defaults to this directory.
"""

import argparse
import json
import random
import shutil
from pathlib import Path

from automodel_vlm.testing import COLOURS, QUESTIONS, SHAPES, save_processor
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
SIZE = 32  # the processor's image size
SCALE = 4  # drawn at SCALE x SIZE, then downsampled: anti-aliased edges
RADIUS = (10.5, 12.0)  # half the shape's width, in pixels of 32: 21-24 px wide
JITTER = 1.0  # the centre moves up to this many pixels from the image's centre, each axis


def draw(shape: str, colour: str, rng: random.Random) -> Image.Image:
    """One filled ``shape`` of ``colour``, about two thirds of the image wide, near the centre, on a light
    random background."""
    big = SIZE * SCALE
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(image)
    r = rng.uniform(*RADIUS) * SCALE  # half the shape's width
    cx, cy = (big / 2 + rng.uniform(-JITTER, JITTER) * SCALE for _ in range(2))
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def write_shapes(directory: Path, n: int, seed: int, name: str) -> Path:
    """``directory/<name>.jsonl``: ``n`` images (``images/<name>_<i>.png``, paths relative to the
    file), each in two records: "what colour is the shape?" and "what shape is it?"."""
    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        rel = f"images/{name}_{i}.png"
        draw(shape, colour, rng).save(directory / rel)
        for kind, answer in (("colour", colour), ("shape", shape)):
            records.append({
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[kind]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [rel],
            })
    rng.shuffle(records)
    path = directory / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE)
    parser.add_argument("--train", type=int, default=1000, help="training images (two records each)")
    parser.add_argument("--val", type=int, default=100, help="held-out images (two records each)")
    parser.add_argument("--patch-size", type=int, default=8, help="must match config.yaml (image_seq_length = (32 / P) ** 2)")
    args = parser.parse_args()
    shutil.rmtree(args.out / "data" / "images", ignore_errors=True)
    save_processor(args.out / "processor", image_size=SIZE, patch_size=args.patch_size)
    write_shapes(args.out / "data", n=args.train, seed=0, name="train")
    write_shapes(args.out / "data", n=args.val, seed=1, name="val")  # held-out images, drawn with another seed
