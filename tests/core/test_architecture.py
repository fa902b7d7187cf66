"""A model loader declares its model's architecture (``model_config`` on its factory) and parallelizers'
``validate_model`` checks read it there, never another plugin's config keys (issue 22)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LOADER = '''
from automodel import hookimpl


def toy(ctx, layers: int = 2, heads: int = 4):
    raise NotImplementedError("never built in this test")


toy.model_config = lambda args: {"num_hidden_layers": args.get("layers", 2), "num_attention_heads": args.get("heads", 4)}


def opaque(ctx, path: str = "x"):
    raise NotImplementedError


def files(ctx, weights: str = "", vocab: str = ""):  # a loader whose tokenizer key is its own
    raise NotImplementedError


files.tokenizer_dir = lambda args: args.get("vocab") or None


@hookimpl
def register_model_loaders(register):
    register("toy", toy)
    register("opaque", opaque)
    register("files", files)
'''


@pytest.fixture()
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from automodel.plugins import load_plugins

    (tmp_path / "toy_loader.py").write_text(LOADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield load_plugins(["toy_loader"], entry_points=False)
    sys.modules.pop("toy_loader", None)


def test_validate_model_gets_what_the_loader_declares(plugins) -> None:
    from automodel.architecture import call_validate_model, model_architecture

    seen = []

    def two(model_cfg, architecture):  # the declared form
        seen.append((model_cfg, architecture))
        return []

    def one(model_cfg):  # the older form still works: the section alone
        seen.append((model_cfg,))
        return [("one", "")]

    assert call_validate_model(two, {"name": "toy", "heads": 3}, plugins) == []
    assert seen[-1] == ({"name": "toy", "heads": 3}, {"num_hidden_layers": 2, "num_attention_heads": 3})
    assert call_validate_model(one, {"name": "toy"}, plugins) == [("one", "")] and seen[-1] == ({"name": "toy"},)
    assert model_architecture({"name": "opaque"}, plugins) is None  # declares nothing: checked on the built model
    assert model_architecture({"name": "missing"}, plugins) is None  # validation reports the unknown loader itself


def test_the_hf_loader_declares_config_and_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    from automodel.architecture import model_architecture
    from automodel.plugins import load_plugins

    plugins = load_plugins(entry_points=False)
    assert model_architecture({"name": "hf", "pretrained": str(tiny_model_dir)}, plugins)["num_attention_heads"] == 4
    inline = {"model_type": "llava", "text_config": {"num_attention_heads": 6}}
    assert model_architecture({"name": "hf", "config": inline}, plugins) == {"num_attention_heads": 6}
    assert model_architecture({"name": "hf", "pretrained": "org/hub-id"}, plugins) is None


def test_tokenizer_checks_ask_the_loader_where_its_tokenizer_is(plugins, tiny_model_dir, tmp_path) -> None:
    """The chat dataset's chat-template check reads the tokenizer directory the loader declares
    (``tokenizer_dir``), whatever the loader calls its keys; a loader that declares none is not checked."""
    from automodel.architecture import model_tokenizer_dir
    from automodel.builtin.datasets.conversations import _tokenizer_has_chat_template

    assert model_tokenizer_dir({"name": "files", "vocab": str(tiny_model_dir)}, plugins) == Path(tiny_model_dir)
    assert model_tokenizer_dir({"name": "files", "vocab": str(tmp_path / "missing")}, plugins) is None  # not a directory
    assert model_tokenizer_dir({"name": "opaque", "path": str(tiny_model_dir)}, plugins) is None  # declares nothing
    assert model_tokenizer_dir({"name": "hf", "pretrained": str(tiny_model_dir)}, plugins) == Path(tiny_model_dir)
    assert model_tokenizer_dir({"name": "hf", "pretrained": str(tiny_model_dir), "tokenizer": "org/hub-id"}, plugins) is None
    # the tiny tokenizer has no chat template: found through the third-party loader's own key
    found = _tokenizer_has_chat_template({"model": {"name": "files", "vocab": str(tiny_model_dir)}, "plugins": ["toy_loader"]})
    assert found == (str(tiny_model_dir), False)
    assert _tokenizer_has_chat_template({"model": {"name": "opaque", "path": str(tiny_model_dir)}, "plugins": ["toy_loader"]}) is None
