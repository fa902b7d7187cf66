"""pytest plugin of automodel (entry point ``pytest11``), active wherever automodel-core is installed.

It keeps tests offline (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``,
``WANDB_MODE=offline``, unless already set) and provides fixtures:

* ``tiny_model_dir`` (session): a tiny Llama + character tokenizer saved once, usable as
  ``model.pretrained`` (:func:`automodel.testing.tiny_model`);
* ``automodel_config``: ``automodel_config(**sections) -> Path``, a small training config in
  ``tmp_path`` using the tiny model (:func:`automodel.testing.make_config`);
* ``check_plugin``: :func:`automodel.testing.check_plugin`.

Importing it imports neither torch nor transformers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}


def pytest_configure(config: pytest.Config) -> None:
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and its character tokenizer, saved once per session."""
    from automodel.testing import tiny_model

    return tiny_model(tmp_path_factory.mktemp("automodel-model"))


@pytest.fixture
def automodel_config(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    """``automodel_config(**sections)``: write a small config (6 steps, tiny model) to ``tmp_path``."""
    from automodel.testing import make_config

    def make(**sections: Any) -> Path:
        return make_config(tmp_path, tiny_model_dir, **sections)

    return make


@pytest.fixture
def check_plugin() -> Callable[..., Any]:
    """:func:`automodel.testing.check_plugin`."""
    from automodel.testing import check_plugin as check

    return check
