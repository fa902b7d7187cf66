"""automodel: PyTorch-native fine-tuning of Hugging Face LLMs, built as a plugin ecosystem.

Importing this package is cheap: it does not import torch. Plugins write::

    from automodel import hookimpl

    @hookimpl
    def register_losses(register):
        register("my_loss", "my_package.loss:MyLoss")
"""

from automodel.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl", "hookspec"]
