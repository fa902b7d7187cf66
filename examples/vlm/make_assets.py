"""Rebuild the VLM example's shipped assets: a character-level Llava processor and the shapes task.

    python examples/vlm/make_assets.py [OUT_DIR] [--train N] [--patch-size P]

Writes processor/ (tokenizer with an <image> token, CLIP image processor at 32x32 with P x P patches,
chat template), data/train.jsonl + data/val.jsonl and their PNGs in data/images/: one large filled
circle, square or triangle (26-29 px wide, centred within 1 px) of one of four colours per 32x32 image
(drawn at 4x and downsampled, so edges are anti-aliased) on a light random background; every image is
asked both questions (its colour and its shape) in two records. Deterministic: running it again writes identical files.
OUT_DIR defaults to this directory.
"""

import argparse
import shutil
from pathlib import Path

from automodel_vlm.testing import save_processor, write_shapes

HERE = Path(__file__).parent
SIZE = 32  # the processor's image size
SHAPES = {  # automodel_vlm.testing.draw arguments
    "radius": (13.0, 14.5),  # half the shape's width, in pixels of 32: 26-29 px wide (a square's corners
    # then differ from a circle's over whole patches; at 21-24 px circles and squares were mixed up)
    "jitter": 1.0,  # the centre moves up to this many pixels from the image's centre, each axis
    "scale": 4,  # drawn at 4 x 32 pixels, then downsampled: anti-aliased edges
}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=HERE)
    parser.add_argument("--train", type=int, default=1000, help="training images (two records each)")
    parser.add_argument("--val", type=int, default=100, help="held-out images (two records each)")
    parser.add_argument("--patch-size", type=int, default=8, help="must match config.yaml (image_seq_length = (32 / P) ** 2)")
    args = parser.parse_args()
    shutil.rmtree(args.out / "data" / "images", ignore_errors=True)
    save_processor(args.out / "processor", image_size=SIZE, patch_size=args.patch_size)
    data = args.out / "data"
    write_shapes(data, n=args.train, seed=0, name="train", size=SIZE, both_questions=True, **SHAPES)
    write_shapes(data, n=args.val, seed=1, name="val", size=SIZE, both_questions=True, **SHAPES)  # held-out, another seed
