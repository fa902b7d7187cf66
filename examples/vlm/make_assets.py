"""Rebuild the VLM example's shipped assets: a character-level Llava processor and the shapes task.

    python examples/vlm/make_assets.py

Writes processor/ (tokenizer with an <image> token, CLIP image processor at 32x32, chat template),
data/train.jsonl + data/val.jsonl and their PNGs in data/images/ (one filled circle, square or
triangle of one of four colours per 32x32 image, random size, position and background; each record
asks its colour or its shape). Deterministic: running it again writes identical files.
"""

import shutil
from pathlib import Path

from automodel_vlm.testing import save_processor, write_shapes

HERE = Path(__file__).parent

if __name__ == "__main__":
    shutil.rmtree(HERE / "data" / "images", ignore_errors=True)
    save_processor(HERE / "processor")
    write_shapes(HERE / "data", n=1000, seed=0, name="train")
    write_shapes(HERE / "data", n=200, seed=1, name="val")  # held-out images, drawn with another seed
