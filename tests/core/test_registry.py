"""Registry: lazy targets, unknown names, duplicates, first-party install hints."""

from __future__ import annotations

import pytest
from automodel.errors import PluginError, UnknownComponentError
from automodel.plugins import load_plugins
from automodel.registry import Entry, Registry, import_target


def test_builtins_register_every_builtin_component():
    registry = load_plugins(entry_points=False).registry
    assert registry.names("model_loaders") == ["hf"]
    assert set(registry.names("datasets")) == {"instruction", "chat", "squad", "hellaswag", "mock"}
    assert registry.names("losses") == ["masked_ce"]
    assert registry.names("parallelizers") == ["ddp"]
    assert set(registry.names("loggers")) == {"console", "jsonl"}
    assert set(registry.names("lr_schedulers")) == {"constant", "cosine", "linear", "wsd"}
    assert set(registry.names("optimizers")) == {"adamw", "sgd", "muon", "adafactor", "adamw_8bit"}


def test_lazy_targets_are_not_imported_until_resolved():
    entry = load_plugins(entry_points=False).registry.get("losses", "masked_ce")
    assert isinstance(entry.target, str)
    factory = entry.resolve()
    assert callable(factory) and not isinstance(entry.target, str)


def test_unknown_name_suggests_the_closest_and_lists_installed():
    registry = load_plugins(entry_points=False).registry
    with pytest.raises(UnknownComponentError) as e:
        registry.get("losses", "maskd_ce", key="loss.name")
    msg = str(e.value)
    assert "loss.name" in msg and "Did you mean 'masked_ce'?" in msg and "Installed losses: masked_ce" in msg


def test_unknown_first_party_name_says_which_package_to_install():
    registry = Registry()
    with pytest.raises(UnknownComponentError, match="pip install automodel-fsdp2"):
        registry.get("parallelizers", "fsdp2")


def test_duplicate_names_name_both_plugins():
    registry = Registry()
    registry.add(Entry("losses", "ce", "a:b", "plugin_one", "pkg-one", "1.0"))
    with pytest.raises(PluginError) as e:
        registry.add(Entry("losses", "ce", "c:d", "plugin_two", "pkg-two", "2.0"))
    assert "pkg-one 1.0" in str(e.value) and "pkg-two 2.0" in str(e.value)


def test_import_target_errors_are_actionable():
    with pytest.raises(PluginError, match="cannot import module 'no_such_module_xyz'"):
        import_target("no_such_module_xyz:thing")
    with pytest.raises(PluginError, match="has no attribute 'nope'"):
        import_target("automodel.builtin.losses:nope")
    assert import_target("automodel.builtin.losses.MaskedCrossEntropy").__name__ == "MaskedCrossEntropy"
