"""automodel-vlm: the image_chat dataset and its collate, the hf_vlm loader, and their errors (in process, no training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from automodel.errors import AutomodelError
from automodel_vlm.data import ImageChatDataset, _cat_padded, _validate, image_chat
from automodel_vlm.model import hf_vlm, model_parts
from automodel_vlm.testing import IMAGE_TOKEN_ID, char_processor, draw, save_processor, tiny_llava_config, write_shapes

CTX = SimpleNamespace(print=lambda *a, **k: None, meta_init=False, device=torch.device("cpu"), config={"seed": 0})


@pytest.fixture(scope="module")
def processor():
    return char_processor()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), n=6)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _image(path: Path, colour: str = "red") -> str:
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    draw("square", colour, random.Random(0)).save(path)
    return path.name


def _labels_text(processor, item) -> str:
    return processor.tokenizer.decode([t for t in item["labels"] if t != -100])


# -- items and batches ----------------------------------------------------------------------------


def test_labels_are_the_assistant_answer_only(processor, shapes: Path) -> None:
    ds = image_chat(CTX, processor, str(shapes))
    records = [json.loads(line) for line in shapes.read_text().splitlines()]
    for i in range(len(ds)):
        item = ds[i]
        answer = records[i]["messages"][1]["content"][0]["text"]
        assert _labels_text(processor, item) == answer + "</s>"
        ids = item["input_ids"]
        assert ids.count(IMAGE_TOKEN_ID) == 16  # 32x32 image, 8x8 patches
        assert all(label == -100 for t, label in zip(ids, item["labels"]) if t == IMAGE_TOKEN_ID)
        assert item["pixel_values"].shape == (1, 3, 32, 32)


def test_collate_pads_shifts_and_concatenates_images(processor, tmp_path: Path) -> None:
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "b.png", "blue")
    data = _write(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "<image>colour?"}, {"role": "assistant", "content": "red"}], "images": [a]},
        {"messages": [{"role": "user", "content": "<image><image>which is blue, first or second?"},
                      {"role": "assistant", "content": "second"}], "images": [a, b]},
        {"messages": [{"role": "user", "content": "no image here"}, {"role": "assistant", "content": "ok"}]},
    ])
    ds = image_chat(CTX, processor, str(data))
    items = [ds[i] for i in range(3)]
    batch = ds.collate(items)
    n = max(len(x["input_ids"]) for x in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, n)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)  # 1 + 2 + 0 images
    for i, x in enumerate(items):
        k = len(x["input_ids"])
        assert batch["labels"][i, : k - 1].tolist() == x["labels"][1:]  # shifted by one
        assert (batch["labels"][i, k - 1:] == -100).all() and batch["attention_mask"][i].sum() == k
    # the batch goes through the real model: image features fill exactly the image tokens
    model, _ = hf_vlm(CTX, config=tiny_llava_config(), processor=str(save_processor(tmp_path / "proc")))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert model(**inputs).logits.shape == (3, n, model.config.text_config.vocab_size)


def test_multi_turn_inline_refs_and_prefix_fallback_agree(processor, tmp_path: Path) -> None:
    a = _image(tmp_path / "img" / "a.png")
    data = _write(tmp_path / "d.jsonl", [{"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image", "image": "img/a.png"}, {"type": "text", "text": "colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "shape?"}]},
        {"role": "assistant", "content": "square"},
    ]}])
    assert a == "a.png"
    ds = image_chat(CTX, processor, str(data))
    item = ds[0]
    assert _labels_text(processor, item) == "red</s>square</s>"
    ds.offsets = False  # processors that report no placeholder offsets: compare token prefixes
    again = ds[0]
    assert again["labels"] == item["labels"] and again["input_ids"] == item["input_ids"]
    everything = ImageChatDataset(ds.records, processor, ds.source, chat_template=None, train_on="all", max_length=512,
                                  where=ds.where)[0]
    assert sum(x != -100 for x in everything["labels"]) == len(item["input_ids"]) - 16  # all but the image tokens


def test_hf_datasets_image_column_matches_jsonl(processor, shapes: Path, tmp_path: Path) -> None:
    import datasets

    records = [json.loads(line) for line in shapes.read_text().splitlines()]
    features = datasets.Features({"messages": [{"role": datasets.Value("string"), "content": [
        {"type": datasets.Value("string"), "text": datasets.Value("string")}]}], "images": [datasets.Image()]})
    for r in records:
        r["images"] = [str(shapes.parent / p) for p in r["images"]]
        for m in r["messages"]:
            for part in m["content"]:
                part.setdefault("text", None)
    datasets.Dataset.from_list(records, features=features).save_to_disk(str(tmp_path / "hf"))
    from_hf = image_chat(CTX, processor, str(tmp_path / "hf"))
    from_jsonl = image_chat(CTX, processor, str(shapes))
    assert len(from_hf) == len(from_jsonl)
    for i in range(len(from_hf)):
        a, b = from_hf[i], from_jsonl[i]
        assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])


def test_cat_padded_and_per_token_extras(processor, shapes: Path) -> None:
    out = _cat_padded([torch.ones(1, 4, 6), torch.ones(2, 3, 8)])  # e.g. different patch grids
    assert out.shape == (3, 4, 8) and out[1:, 3:].abs().sum() == 0 and out[0, :, 6:].abs().sum() == 0
    ds = image_chat(CTX, processor, str(shapes))
    items = [ds[0], ds[1]]
    for x in items:  # a per-token column (like Gemma 3's token_type_ids) is padded along the sequence
        x["token_type_ids"] = torch.tensor([int(t == IMAGE_TOKEN_ID) for t in x["input_ids"]])
    batch = ds.collate(items)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"].sum() == 32


# -- errors -----------------------------------------------------------------------------------------


def _error(processor, path: Path, **kw) -> str:
    with pytest.raises(AutomodelError) as e:
        ds = image_chat(CTX, processor, str(path), **kw)
        ds[0]
    return str(e.value)


def test_errors_name_the_record_and_the_file(processor, tmp_path: Path) -> None:
    ok = _image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    user = {"role": "user", "content": "<image>colour?"}
    answer = {"role": "assistant", "content": "red"}
    good = {"messages": [user, answer], "images": [ok]}

    msg = _error(processor, _write(tmp_path / "a.jsonl", [good, {"messages": [user, answer], "images": ["gone.png"]}]))
    assert "record 1 (line 2)" in msg and "a.jsonl" in msg and "not found" in msg and "gone.png" in msg
    msg = _error(processor, _write(tmp_path / "b.jsonl", [{"messages": [user, answer], "images": ["broken.png"]}]))
    assert "record 0 (line 1)" in msg and "cannot read image" in msg and "broken.png" in msg
    msg = _error(processor, _write(tmp_path / "c.jsonl", [good, good, {"messages": [user], "images": [ok]}]))
    assert "record 2 (line 3)" in msg and "c.jsonl" in msg and "no assistant message" in msg
    two = {"role": "user", "content": "<image><image>same?"}
    msg = _error(processor, _write(tmp_path / "d.jsonl", [{"messages": [two, answer], "images": [ok]}]))
    assert "record 0" in msg and "d.jsonl" in msg and "2 image placeholder(s)" in msg and "1 image(s)" in msg
    msg = _error(processor, _write(tmp_path / "e.jsonl", [{"messages": [user, answer], "images": [ok, ok]}]))
    assert "lists 2 image(s)" in msg and "only 1" in msg
    # image references with a text-only model: its tokenizer has no image processor
    msg = _error(processor.tokenizer, _write(tmp_path / "f.jsonl", [good]))
    assert "record 0 (line 1)" in msg and "f.jsonl" in msg and "text-only" in msg and "hf_vlm" in msg
    # ... and the same before launch, from the config
    problems = _validate({"path": str(tmp_path / "f.jsonl")}, {"model": {"name": "hf", "pretrained": "x"}})
    assert problems and "hf_vlm" in problems[0][2]
    assert not _validate({"path": str(tmp_path / "f.jsonl")}, {"model": {"name": "hf_vlm", "pretrained": "x"}})
    # cutting inside the image tokens
    msg = _error(processor, _write(tmp_path / "g.jsonl", [good]), max_length=10)
    assert "record 0" in msg and "max_length=10" in msg and "image tokens" in msg


# -- the loader ---------------------------------------------------------------------------------------


def test_loader_freezes_and_scopes_lora(tmp_path: Path) -> None:
    proc_dir = str(save_processor(tmp_path / "proc"))
    model, proc = hf_vlm(CTX, config=tiny_llava_config(), processor=proc_dir, freeze_vision_tower=True, freeze_projector=True)
    parts = model_parts(model)
    assert type(parts["vision_tower"]).__name__ == "CLIPVisionModel"
    assert type(parts["projector"]).__name__ == "LlavaMultiModalProjector"
    assert type(parts["language_model"]).__name__ == "LlamaModel"
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("model.")}
    assert trainable == {"language_model"}
    assert proc.pad_token_id == 0 and proc.image_processor is not None

    from automodel_lora.transform import LoRA

    ctx = SimpleNamespace(**{**vars(CTX), "config": {"seed": 0}})
    lora = LoRA(r=4, target_modules="all-linear")
    adapted = lora.apply(model, ctx)
    adapted_names = [n for n, _ in adapted.named_modules() if n.endswith("lora_A")]
    assert adapted_names and all(n.startswith("model.language_model.") for n in adapted_names)
    # lora_scope: all -> the vision tower's linear layers too
    model2, _ = hf_vlm(CTX, config=tiny_llava_config(), processor=proc_dir, lora_scope="all")
    names2 = [n for n, _ in LoRA(r=4, target_modules=["q_proj"]).apply(model2, ctx).named_modules() if n.endswith("lora_A")]
    assert any("vision_tower" in n for n in names2) and any("language_model" in n for n in names2)


def test_loader_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc_dir = str(save_processor(tmp_path / "proc"))
    with pytest.raises(AutomodelError, match="(?s)text-only model.*model.name: hf"):
        hf_vlm(CTX, pretrained=str(tiny_model_dir), processor=proc_dir)
    with pytest.raises(AutomodelError, match="not a processor with an image processor"):
        hf_vlm(CTX, config=tiny_llava_config(), processor=str(tiny_model_dir))
    with pytest.raises(AutomodelError, match="unknown model type .lava.; did you mean .llava."):
        hf_vlm(CTX, config={**tiny_llava_config(), "model_type": "lava"}, processor=proc_dir)
    small = tiny_llava_config()
    small["text_config"] = {**small["text_config"], "vocab_size": 40}
    with pytest.raises(AutomodelError, match="49 tokens but the language model's vocab_size is 40"):
        hf_vlm(CTX, config=small, processor=proc_dir)


def test_from_config_is_seeded_and_fully_initialized(tmp_path: Path) -> None:
    """Every weight of a VLM built from a config is initialized by its own (sub)model's rule, from the
    seed alone (a root-only init left CLIP's class_embedding as uninitialized memory: NaN losses)."""
    proc_dir = str(save_processor(tmp_path / "proc"))
    a, _ = hf_vlm(CTX, config=tiny_llava_config(), processor=proc_dir)
    b, _ = hf_vlm(CTX, config=tiny_llava_config(), processor=proc_dir)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
        assert p.abs().max() < 10, name
