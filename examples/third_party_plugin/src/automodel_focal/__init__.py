"""automodel-focal: an example third-party plugin (a loss, a logger and a lifecycle hook).

Imported by every `automodel` command, so it stays light: the components are registered as
"module:attr" strings and torch is imported only when one of them is used.
"""

from automodel import hookimpl


@hookimpl
def register_losses(register):
    register("focal", "automodel_focal.loss:FocalLoss", description="focal loss over label tokens")


@hookimpl
def register_loggers(register):
    register("csv", "automodel_focal.logger:CsvLogger", description="<output_dir>/metrics.csv, one column per metric")


@hookimpl
def on_train_end(ctx, metrics):
    """Lifecycle hooks run on every rank: act once, on the main rank."""
    if ctx.is_main:
        ctx.print(f"focal: finished at step {ctx.train_state.step} with loss {metrics.get('loss', float('nan')):.4f}")


def check_requirements() -> list[str]:
    """What `automodel plugins --check` should report (nothing to check here)."""
    return []
