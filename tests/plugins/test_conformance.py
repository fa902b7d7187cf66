"""Every first-party plugin passes the conformance kit (automodel.testing.check_plugin)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from automodel.testing import check_plugin, write_task_data

DATA = Path(__file__).resolve().parents[1] / "data"

CHAT_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ '\\n' }}{% endfor %}"

#: plugin name -> distribution (every package in requirements-dev.txt, and fp8)
FIRST_PARTY = {
    "fsdp2": "automodel-fsdp2", "tp": "automodel-tp", "lora": "automodel-lora", "triton_ce": "automodel-triton-ce",
    "slurm": "automodel-slurm", "wandb": "automodel-wandb", "fp8": "automodel-fp8", "pp": "automodel-pp",
}


def installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("plugin", sorted(FIRST_PARTY))
def test_first_party_plugin_conforms(plugin):
    if not installed(FIRST_PARTY[plugin]):
        pytest.skip(f"{FIRST_PARTY[plugin]} is not installed")
    # the kit's model is built from a config, which lora refuses to freeze unless told (a random base)
    args = {"lora": {"allow_random_base": True}} if plugin == "lora" else None
    report = check_plugin(plugin, args=args)
    assert report.checked and not report.skipped, str(report)


def test_builtins_conform(tmp_path, tiny_model_dir):
    data = write_task_data(tmp_path / "task.jsonl")
    report = check_plugin("builtin", args={
        "hf": {"pretrained": str(tiny_model_dir)},
        "instruction": {"path": str(data), "prompt": "question", "response": "answer"},
        "chat": {"path": str(DATA / "chat.jsonl"), "chat_template": CHAT_TEMPLATE},
        "squad": {"path": str(DATA / "squad.jsonl")},
        "hellaswag": {"path": str(DATA / "hellaswag.jsonl")},
    })
    from automodel.kinds import KINDS
    from automodel.plugins import load_plugins

    registry = load_plugins(entry_points=False).registry
    registered = [f"{kind.name}/{name}" for kind in KINDS for name in registry.names(kind.name)]
    assert registered and not report.problems, str(report)
    assert sorted(c.split(":")[0] for c in report.checked) == sorted(registered), str(report)  # every builtin checked


def test_vlm_conforms_with_its_processor(tmp_path):
    """hf_vlm and image_chat through the kit's processor path: the loader's (model, processor) run on an
    image + text, the dataset is built with the processor and its collate pads and shifts labels."""
    if not installed("automodel-vlm"):
        pytest.skip("automodel-vlm is not installed")
    from automodel_vlm.testing import char_processor, tiny_vlm, write_shapes

    model = {"pretrained": str(tiny_vlm(tmp_path))}
    data = {"path": str(write_shapes(tmp_path / "data", n=4))}
    report = check_plugin("vlm", args={"hf_vlm": model, "image_chat": data}, tokenizer=char_processor(),
                          config={"model": {"name": "hf_vlm", **model}})
    assert not report.skipped and not report.problems, str(report)
    checked = "\n".join(report.checked)
    assert "model_loaders/hf_vlm: returns (model, LlavaProcessor) that run on an image + text" in checked, checked
    assert "datasets/image_chat: 4 items" in checked and "collate pads and shifts labels (+ pixel_values)" in checked, checked


def test_fsdp2_keeps_loss_parity_with_one_process_over_gloo():
    if not installed("automodel-fsdp2"):
        pytest.skip("automodel-fsdp2 is not installed")
    report = check_plugin("fsdp2", distributed=True, skip={"fsdp2_replicate": "needs a dp_shard partner (fsdp2)"})
    assert "2-process gloo run matches 1 process" in report.checked[0], str(report)


def test_the_kit_finds_what_is_wrong(tmp_path, monkeypatch):
    (tmp_path / "flawed.py").write_text('''
from automodel import hookimpl


@hookimpl
def register_losses(register):
    register("mean_ce", "flawed:MeanCE")


@hookimpl
def register_loggers(register):
    register("picky", "flawed:Picky")


class MeanCE:  # divides by its own micro-batch's tokens, and lets -100 through
    def __call__(self, *, labels, num_label_tokens, logits=None, **_):
        import torch.nn.functional as F
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten().clamp(min=0))


class Picky:
    def __init__(self, ctx):
        pass

    def log(self, metrics, step):
        assert "loss" in metrics

    def close(self):
        pass
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    report = check_plugin("flawed", local_modules=("flawed",), raise_on_problems=False)
    text = str(report)
    assert "losses/mean_ce: positions with labels == -100 get a gradient" in text
    assert "loggers/picky: raised AssertionError" in text  # the validation-only record
    with pytest.raises(AssertionError, match="2 problem"):
        check_plugin("flawed", local_modules=("flawed",))
