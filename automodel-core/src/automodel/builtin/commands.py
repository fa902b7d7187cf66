"""Builtin CLI commands registered through ``register_commands`` (torch imported only when they run)."""

from __future__ import annotations

import inspect
from typing import Any

import click


def curve_rows(lrs: list[float], points: int) -> list[int]:
    """The steps (1-based) to show: evenly spaced, always the first and last, and every step where the
    schedule changes phase (end of warmup, start of decay)."""
    n = len(lrs)
    picked = {1, n} | {1 + round(i * (n - 1) / max(1, points - 1)) for i in range(points)}
    for s in range(2, n):  # phase changes: the slope changes sign or starts/stops being zero
        before, after = lrs[s - 1] - lrs[s - 2], lrs[s] - lrs[s - 1]
        if (abs(before) < 1e-15) != (abs(after) < 1e-15) or before * after < 0:
            picked.add(s)
    return sorted(s for s in picked if 1 <= s <= n)


def format_curve(lrs: list[float], points: int = 20, width: int = 40) -> str:
    peak = max(lrs) or 1.0
    lines = [f"{'step':>7}  {'lr':>10}"]
    for s in curve_rows(lrs, points):
        lr = lrs[s - 1]
        lines.append(f"{s:>7}  {lr:>10.3e}  {'#' * round(width * lr / peak)}")
    return "\n".join(lines)


def lr_curve_command(cli: click.Group) -> None:
    from automodel.cli import _prepare, plugin_option

    @cli.command(name="lr-curve")
    @click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
    @click.option("--steps", type=int, default=None, help="Total optimizer steps (default: step_scheduler.max_steps).")
    @click.option("--points", type=int, default=20, show_default=True, help="Rows to print.")
    @plugin_option
    def lr_curve(config_path: str, overrides: tuple[str, ...], steps: int | None, points: int, plugin_modules: tuple[str, ...]) -> None:
        """Print the learning rate of every phase of CONFIG's schedule (warmup, stable, decay) before training."""
        from automodel.builtin.optim import lr_curve as compute
        from automodel.errors import AutomodelError

        validated, plugins = _prepare(config_path, overrides, plugin_modules)
        cfg = validated.config
        total = steps or cfg["step_scheduler"].get("max_steps")
        if not total or total < 1:
            raise AutomodelError(f"{config_path}: step_scheduler.max_steps is not set, so the number of steps comes from the "
                                 "dataset's size at run time; pass --steps N (e.g. --steps 1000) to see the curve")
        opt = validated.one("optimizer")
        lr = opt.args.get("lr")
        if lr is None:
            lr = inspect.signature(opt.factory).parameters.get("lr", inspect.Parameter("lr", inspect.Parameter.KEYWORD_ONLY, default=1e-3)).default
        sched = cfg["lr_scheduler"]

        def build(optimizer: Any, total_steps: int) -> Any:
            return validated.one("lr_scheduler").build(optimizer=optimizer, total_steps=total_steps)

        lrs = compute(build, {}, float(lr), int(total))
        args = ", ".join(f"{k}={v}" for k, v in sched.items() if k not in ("name", "_target_"))
        name = sched.get("name") or sched.get("_target_")
        click.echo(f"lr_scheduler {name}({args}) over {total} steps, optimizer.lr {lr:g} "
                   f"(groups with an lr multiplier scale it): min {min(lrs):.3e}, max {max(lrs):.3e}, last {lrs[-1]:.3e}")
        click.echo(format_curve(lrs, points))


def plan_command(cli: click.Group) -> None:
    from automodel.cli import plugin_option

    @cli.command(name="plan", context_settings={"ignore_unknown_options": True})
    @click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
    @click.option("--world-size", type=int, default=None, metavar="N",
                  help="Processes to plan for (default: the launcher's, e.g. nproc_per_node x nodes).")
    @click.option("--device", "device", default=None, metavar="NAME",
                  help="The accelerator to plan for (H100-80GB, A100-40GB, ...; same as plan.device=NAME).")
    @click.option("--memory-gb", type=float, default=None, metavar="G", help="Usable memory per device in GiB (plan.memory_gb).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @plugin_option
    def plan(config_path: str, overrides: tuple[str, ...], world_size: int | None, device: str | None,
             memory_gb: float | None, as_json: bool, plugin_modules: tuple[str, ...]) -> None:
        """Estimate CONFIG's per-rank peak memory (parameters, gradients, optimizer state, activations,
        loss/logits, temporaries), FLOPs and step time, without weights, GPU or network: one training step
        on fake tensors with a fake process group. Exit 0 when it fits (or no device is given), 3 when not.

        \b
        automodel plan examples/recipes/llama3.2-1b-full.yaml --device H100-80GB
        automodel plan cfg.yaml --world-size 8 parallel.0.size=8 --json
        """
        import json

        from automodel.plan import advice, format_report

        overrides = tuple(overrides) + ((f"plan.device={device}",) if device else ()) + \
            ((f"plan.memory_gb={memory_gb}",) if memory_gb is not None else ())
        est, cfg = run_plan(config_path, overrides, plugin_modules, world_size)
        if as_json:
            out = est.to_json()
            out["advice"] = advice(est, cfg) if est.fits is False else []
            click.echo(json.dumps(out, indent=2))
        else:
            click.echo(format_report(est))
            if est.fits is False:
                click.echo("to make it fit:\n" + "\n".join(f"  - {a}" for a in advice(est, cfg)))
        if est.fits is False:
            raise SystemExit(3)


def run_plan(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], world_size: int | None) -> Any:
    """(Estimate, resolved config) of CONFIG for ``world_size`` processes (default: the launcher's)."""
    from automodel.cli import _prepare

    validated, plugins = _prepare(config_path, overrides, plugin_modules, world_size=world_size)
    n = world_size or (validated.layout.plan.world_size if validated.layout is not None and validated.layout.plan else 1)
    return plan_validated(validated, plugins, n), validated.config


def plan_validated(validated: Any, plugins: Any, world_size: int) -> Any:
    import contextlib
    import sys

    from automodel.estimate import estimate
    from automodel.runtime import quiet_libraries

    quiet_libraries()
    with contextlib.redirect_stdout(sys.stderr):  # components' progress lines: stdout is the plan (or its JSON)
        return estimate(validated.config, plugins, validated.layout, world_size=world_size)


def check_plan(validated: Any, plugins: Any, config_path: str) -> None:
    """``automodel run``'s memory check: plan the run and refuse it (exit 2, with the breakdown and what
    would make it fit) when the peak exceeds the device's memory. Only when the memory is known: the
    config names a device (``plan.device`` / ``plan.memory_gb``) or the run will use a local GPU; off
    with ``plan.check: false`` or ``--no-plan-check``."""
    from automodel.errors import AutomodelError
    from automodel.plan import advice, format_report

    cfg = validated.config
    spec = cfg.get("plan") or {}
    if spec.get("check", True) is False:
        return
    if not (spec.get("device") or spec.get("memory_gb")):
        if cfg.get("device") == "cpu":
            return
        import torch

        if not torch.cuda.is_available():
            return
    n = validated.layout.plan.world_size if validated.layout is not None and validated.layout.plan else 1
    est = plan_validated(validated, plugins, n)
    if est.fits is False:
        tips = "\n".join(f"  - {a}" for a in advice(est, cfg))
        raise AutomodelError(
            f"{config_path}: the plan does not fit the device's memory, so the run was not started:\n{format_report(est)}\n"
            f"to make it fit:\n{tips}\n"
            "to launch anyway: automodel run ... --no-plan-check (or plan.check: false); see docs/plan.md")
