"""automodel-fp8: the ``fp8`` model transform (FP8 training of the model's linear layers).

    transforms:
      - {name: fp8, backend: torchao, recipe: tensorwise}

Backends: ``torchao`` (``convert_to_float8_training``), ``transformer_engine`` (``te.Linear`` under
FP8 autocast, GPU only) and ``torch`` (this package's ``Float8Linear`` on ``torch._scaled_mm``, no extra
dependency). Registration only: nothing here imports torch.
"""

from __future__ import annotations

from automodel import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_model_transforms(register):
    register(
        "fp8",
        "automodel_fp8.transform:FP8",
        description="FP8 training of linear layers (torchao, transformer_engine or torch._scaled_mm backends)",
    )


def check_requirements() -> list[str]:
    """``automodel plugins --check``: an optional backend that is installed but does not import. A
    backend that is not installed is no problem (``backend: auto`` then uses the torch backend)."""
    import importlib
    import importlib.util

    problems = []
    for module, extra in (("torchao.float8", "torchao"), ("transformer_engine.pytorch", "te")):
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            continue
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            problems.append(f"{module} is installed but fails to import ({type(e).__name__}: {e}); "
                            f"reinstall it for this torch (pip install 'automodel-fp8[{extra}]') or uninstall it")
    return problems
