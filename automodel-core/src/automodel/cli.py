"""The ``automodel`` command line. Importing this module does not import torch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from automodel import __version__
from automodel.compat import core_version_problems
from automodel.errors import AutomodelError
from automodel.kinds import KINDS as KIND_RECORDS

#: Entry-point group of plugin commands: ``NAME = "package.module:command"`` (a ``click.Command``).
COMMAND_ENTRY_POINTS = "automodel.commands"


class AutomodelGroup(click.Group):
    """The core's commands plus the plugins', found without importing any plugin for ``--help``:

    * commands declared as entry points in the group ``automodel.commands`` are listed from package
      metadata and imported only when run (or asked for their own ``--help``);
    * the builtin plugin's ``register_commands`` is called directly (it imports nothing heavy);
    * commands a plugin adds with its ``register_commands`` hook load with every plugin, only when a
      command name is not found otherwise (they are not listed by ``automodel --help``).
    """

    _plugin_commands_loaded = False
    _builtin_loaded = False
    _declared: dict[str, Any] | None = None

    def _load_builtin_commands(self) -> None:
        """The default plugins' ``register_commands`` (imported by name, as the plugin manager does)."""
        if not self._builtin_loaded:
            self._builtin_loaded = True
            import importlib

            from automodel.plugins import DEFAULT_PLUGINS

            for module_name in DEFAULT_PLUGINS:
                register = getattr(importlib.import_module(module_name), "register_commands", None)
                if register is not None:
                    register(cli=self)

    def _entry_point_commands(self) -> dict[str, Any]:
        if self._declared is None:
            from importlib.metadata import entry_points

            self._declared = {ep.name: ep for ep in entry_points(group=COMMAND_ENTRY_POINTS)}
        return self._declared

    def _load_plugin_commands(self) -> None:
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True
        from automodel.plugins import load_plugins

        try:
            load_plugins().hook.register_commands(cli=self)
        except AutomodelError as e:  # the CLI still works; commands that need the plugins report it again
            click.echo(f"warning: plugin commands not loaded: {e}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_builtin_commands()
        return sorted({*self.commands, *self._entry_point_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_builtin_commands()
        cmd = self.commands.get(name)
        if cmd is None and name in self._entry_point_commands():
            cmd = self._load_entry_point_command(name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = self.commands.get(name)
        return cmd

    def _load_entry_point_command(self, name: str) -> click.Command:
        from automodel.errors import PluginError

        ep = self._entry_point_commands()[name]
        dist = f"{ep.dist.metadata['Name']} {ep.dist.version}" if ep.dist is not None else "?"
        try:
            cmd = ep.load()
        except Exception as e:
            raise PluginError(f"command '{name}' (entry point '{name} = {ep.value}' in group {COMMAND_ENTRY_POINTS}, {dist}) "
                              f"failed to import: {type(e).__name__}: {e}. Reinstall or uninstall {dist.split()[0]}") from e
        if not isinstance(cmd, click.Command):
            raise PluginError(f"command '{name}' (entry point '{name} = {ep.value}', {dist}) is a {type(cmd).__name__}, "
                              "not a click.Command: point the entry point at the command object")
        self.add_command(cmd, name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but a plugin's entry-point command shows its package instead of being imported."""
        rows = []
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is not None:
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit)))
                continue
            ep = self._entry_point_commands()[name]
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "a plugin"
            rows.append((name, f"[{dist}] see: automodel {name} --help"))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=AutomodelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="automodel")
@click.option("--debug", is_flag=True, envvar="AUTOMODEL_DEBUG", help="Show full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fine-tune Hugging Face LLMs with PyTorch, extended by plugins.

    \b
    automodel run cfg.yaml optimizer.lr=3e-4 step_scheduler.max_steps=100
    automodel validate cfg.yaml
    automodel plugins
    """
    ctx.obj = {"debug": debug}


plugin_option = click.option(
    "--plugin", "plugin_modules", multiple=True, metavar="MODULE",
    help="Load a local plugin module (importable from the current directory). Repeatable.",
)


def _prepare(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], world_size: int | None = None,
             run_targets: bool = False) -> tuple[Any, Any]:
    """Load, override, load plugins, validate (``run_targets``: see :func:`automodel.config.validate`).
    Returns (the bound :class:`automodel.bound.RunPlan`, plugins)."""
    from automodel import config as config_mod
    from automodel.plugins import load_plugins

    raw = config_mod.load(config_path, overrides)
    local = list(plugin_modules) + [m for m in raw.get("plugins") or [] if isinstance(m, str)]
    plugins = load_plugins(local)
    # a broken installed plugin blocks only a config that needs it (else: a warning)
    return plugins.validate_with(lambda: config_mod.validate(raw, plugins, source=config_path, world_size=world_size,
                                                             run_targets=run_targets)), plugins


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@plugin_option
@click.option("--dry-run", is_flag=True, help="Validate, then show what the launcher would start (e.g. the sbatch script) without starting it.")
@click.option("--allow-config-change", is_flag=True,
              help="Resume even though the config changed in ways the checkpoint allows (lr, schedule, steps, data, ...); "
              "same as checkpoint.allow_config_change=true. See docs/safety.md.")
@click.option("--no-plan-check", is_flag=True,
              help="Launch even when `automodel plan` says the run does not fit the device's memory (same as plan.check=false).")
def run(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], dry_run: bool = False,
        allow_config_change: bool = False, no_plan_check: bool = False) -> None:
    """Validate CONFIG (with overrides) and train, through the configured launcher."""
    from automodel import config as config_mod
    from automodel.contracts import Launcher, member
    from automodel.launch import Job, in_worker
    from automodel.lock import RunLock, lock_for_worker

    if allow_config_change:
        overrides = (*overrides, "checkpoint.allow_config_change=true")
    if in_worker():
        validated, plugins = _prepare(config_path, overrides, plugin_modules, world_size=int(os.environ.get("WORLD_SIZE", 1)),
                                      run_targets=True)
        from automodel.train import train

        # rank 0 of a job whose launcher holds the lock (torchrun) runs under it; one whose launcher does
        # not (a Slurm job: `automodel run` submitted it and exits) takes or adopts it (see lock_for_worker)
        lock = lock_for_worker(validated.config["output_dir"]) if os.environ.get("RANK", "0") == "0" else None
        try:
            train(validated)
        finally:
            if lock is not None:
                lock.release()
        return
    validated, plugins = _prepare(config_path, overrides, plugin_modules, run_targets=not dry_run)
    cfg, launcher = validated.config, validated.launcher
    if not no_plan_check:  # refuse before launch when the plan exceeds a known device memory (docs/plan.md)
        from automodel.builtin.commands import check_plan

        check_plan(validated, plugins, config_path)
    out = Path(cfg["output_dir"])
    saved = out / "config.yaml"
    if dry_run:  # a dry run writes nothing (an existing run's config.yaml stays as it is) and runs no _target_
        job = Job(cfg, saved.resolve(), list(plugin_modules), plugins, validated.layout, validated)
        name = cfg["launcher"].get("name", cfg["launcher"].get("_target_"))
        if launcher is None:
            raise AutomodelError(f"--dry-run: the launcher is a _target_ ({name}), which a dry run does not call; "
                                 f"`automodel validate {config_path}` checked the config")
        preview = member(launcher, Launcher, "preview")
        if preview is None:
            raise AutomodelError(f"--dry-run: the '{name}' launcher has no dry run; `automodel validate {config_path}` checks the config")
        preview(job)
        return
    with RunLock(out, report=lambda m: click.echo(m, err=True)):  # before config.yaml: a second run changes nothing
        saved.write_text(config_mod.dump(cfg))  # the one copy: workers and `automodel export` read it
        job = Job(cfg, saved.resolve(), list(plugin_modules), plugins, validated.layout, validated)
        code = launcher.launch(job)
    sys.exit(code)


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@plugin_option
@click.option("--print", "print_config", is_flag=True, help="Print the resolved config.")
def validate(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], print_config: bool) -> None:
    """Check CONFIG without training: sections, components, arguments, types, sizes, files."""
    from automodel import config as config_mod

    cfg = _prepare(config_path, overrides, plugin_modules)[0].config
    if print_config:
        click.echo(config_mod.dump(cfg))
    parts = [f"model={cfg['model'].get('name', cfg['model'].get('_target_'))}"]
    parts += [f"parallel={'+'.join(p.get('name', '?') for p in cfg['parallel']) or 'none'}"]
    parts += [f"loss={cfg['loss'].get('name', '_target_')}", f"launcher={cfg['launcher'].get('name', '_target_')}"]
    # with --print, stdout is the resolved YAML alone (`validate cfg --print > resolved.yaml` reloads)
    click.echo(f"{config_path}: OK ({', '.join(parts)})", err=print_config)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--check", is_flag=True, help="Also import every registered component, check its signature against its "
              "kind, look for hook functions without @hookimpl, and check plugin requirements.")
@plugin_option
def plugins(as_json: bool, check: bool, plugin_modules: tuple[str, ...]) -> None:
    """List plugins, their versions and what they register (with each component's description)."""
    from automodel.plugins import load_plugins

    loaded = load_plugins(plugin_modules)
    problems, warnings = _doctor(loaded) if check else ([], [])
    if as_json:
        data = [
            {
                "name": i.name, "module": i.module, "source": i.source, "distribution": i.dist,
                "version": i.version, "error": i.error, "registers": i.registers, "hooks": i.hooks,
                "descriptions": i.descriptions,
            }
            for i in loaded.infos
        ]
        click.echo(json.dumps({"plugins": data, "problems": problems, "warnings": warnings} if check else data, indent=2))
    else:
        for i in loaded.infos:
            click.echo(f"{i.name}  ({i.label}, {i.source})")
            if i.error:
                click.echo(f"    FAILED: {i.error}")
            for kind, names in i.registers.items():
                described = i.descriptions.get(kind, {})
                if not described:
                    click.echo(f"    {kind}: {', '.join(names)}")
                    continue
                width = max(map(len, names))
                for n, name in enumerate(names):
                    head = f"    {kind}: " if n == 0 else " " * (len(kind) + 6)
                    text = described.get(name)
                    click.echo(f"{head}{name.ljust(width)}  {text}".rstrip() if text else f"{head}{name}")
            lifecycle = [h for h in i.hooks if h.startswith("on_") or h == "register_commands"]
            if lifecycle:
                click.echo(f"    hooks: {', '.join(lifecycle)}")
        if check:
            lines = [f"warning: {w}" for w in warnings] + [f"problem: {p}" for p in problems]
            click.echo("\n" + "\n".join(lines + ([] if problems else ["all plugins OK"])))
    if check and problems:
        sys.exit(2)


def _doctor(loaded: Any) -> tuple[list[str], list[str]]:
    """``plugins --check``: (problems, warnings) of every loaded plugin."""
    from automodel.contracts import PluginModule, member
    from automodel.errors import PluginError
    from automodel.plugins import unmarked_hooks
    from automodel.registry import KINDS, signature_problems

    problems: list[str] = []
    warnings: list[str] = []
    for entry in loaded.registry.entries():
        try:
            entry.resolve()  # imports it and checks its signature against its kind
        except AutomodelError as e:
            problems.append(str(e) if str(e).startswith(entry.provider) else f"{entry.plugin}: {e}")
        if callable(entry.target):
            warnings += [f"{entry.plugin}: {KINDS[entry.kind][1]} '{entry.name}': {w}"
                         for w in signature_problems(entry.kind, entry.target)[1]]
    problems += core_version_problems(loaded.infos)
    for info in loaded.infos:
        plugin = loaded.pm.get_plugin(info.name)
        if plugin is None:
            continue
        problems += [f"{info.name}: {msg}" for msg in unmarked_hooks(plugin)]
        doctor = member(plugin, PluginModule, "check_requirements")
        if doctor is not None:
            problems += [f"{info.name}: {msg}" for msg in doctor() or []]
    problems += [i.error if isinstance(i.exception, PluginError) else f"{i.name}: failed to import: {i.error}"
                 for i in loaded.failed]
    return problems, warnings


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="What the plugin provides (repeatable): " + ", ".join(
                  [*(k.scaffold for k in KIND_RECORDS), "hook", "command"]) + ". Default: loss.")
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False), show_default=True,
              help="Where to create the package directory automodel-NAME/.")
def new_plugin(name: str, kinds: tuple[str, ...], directory: str) -> None:
    """Create a ready plugin package automodel-NAME/: pyproject with the entry point, stubs with each
    kind's call signature, README and tests that use automodel.testing.check_plugin.

    \b
    automodel new-plugin focal --kind loss
    pip install -e './automodel-focal[test]' && automodel plugins && pytest automodel-focal
    """
    from automodel.scaffold import create

    out = create(name, list(kinds) or ["loss"], Path(directory))
    click.echo(f"created {out}")
    # the [test] extra brings pytest, which a venv made for the quickstart does not have
    click.echo(f"next: pip install -e '{out}[test]' && automodel plugins --check && pytest {out}")


#: Prefix of the click parameter names of the options the run's components declare (no clash with the core's).
_DECLARED = "declared__"


class ExportCommand(click.Command):
    """``automodel export``: the core's arguments plus the options the components of the checkpoint's run
    declare (:mod:`automodel.export_options`), read from its config.yaml before the arguments are parsed,
    so ``automodel export CKPT --help`` lists them and an undeclared one is refused with what the run has."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from automodel.export_options import unknown_option_message

        ctx.meta["automodel.export"] = self._declared(args)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            cfg, declared, why = ctx.meta["automodel.export"]
            raise click.UsageError(unknown_option_message(e.option_name, cfg, declared, why), ctx) from None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = list(self.params)
        _, declared, _ = ctx.meta.get("automodel.export", (None, {}, ""))
        for name, d in declared.items():
            o = d.option
            flag = "--" + name.replace("_", "-")
            decls = [f"{flag}/--{o.off}" if o.off else flag, _DECLARED + name]
            text = f"{o.help} [{', '.join(d.owners)}]"
            if o.type is bool:
                params.append(click.Option(decls, is_flag=True, default=None, help=text))
            else:
                params.append(click.Option(decls, type=o.type, default=None, help=text))
        help_option = self.get_help_option(ctx)
        return params + ([help_option] if help_option is not None else [])

    @staticmethod
    def _declared(args: list[str]) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
        """(the run's config, its declared options, why the run could not be read) from CKPT in ``args``."""
        from automodel.config import load_yaml
        from automodel.export_options import export_options_of
        from automodel.model import find_config
        from automodel.plugins import load_plugins

        checkpoint, modules, rest = None, [], iter(args)
        for a in rest:
            if a == "--plugin":
                modules.append(next(rest, ""))
            elif a.startswith("--plugin="):
                modules.append(a.partition("=")[2])
            elif not a.startswith("-") and checkpoint is None:
                checkpoint = a
        if checkpoint is None:
            return None, {}, "no CKPT given"
        try:
            cfg = load_yaml(find_config(Path(checkpoint).expanduser()))
            plugins = load_plugins(modules + [m for m in cfg.get("plugins") or [] if isinstance(m, str)])
            return cfg, export_options_of(cfg, plugins), ""
        except AutomodelError as e:
            if {"--help", "-h"} & set(args) or not Path(checkpoint).exists():
                return None, {}, str(e)  # help still shows; a missing CKPT is click's to report
            raise


@cli.command(name="export", cls=ExportCommand)
@click.argument("checkpoint", metavar="CKPT", type=click.Path(exists=True))
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False))
@plugin_option
def export_cmd(checkpoint: str, out_dir: str, plugin_modules: tuple[str, ...], **declared: Any) -> None:
    """Write a Hugging Face model (safetensors + index + config + tokenizer) from a training checkpoint.

    CKPT is a step_<N> directory, a checkpoint directory or a run directory (its newest complete
    checkpoint). The model is rebuilt from the checkpoint's config.yaml on CPU; OUT loads with
    transformers.AutoModelForCausalLM.from_pretrained, unless a transform of the run exports itself
    (an adapter directory, say).

    The run's components may add options (a factory's export_options): `automodel export CKPT --help`
    lists those of CKPT's run.
    """
    from automodel.model import export_checkpoint

    options = {k.removeprefix(_DECLARED): v for k, v in declared.items() if v is not None}
    out = export_checkpoint(checkpoint, out_dir, plugin_modules, options=options)
    click.echo(f"exported {checkpoint} to {out}")


@cli.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True)
@click.option("-o", "--output", "output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML page to write.")
@click.option("--png", is_flag=True, help="Also write the curves as a static image next to it (<output stem>.png; needs matplotlib).")
def report(run_dirs: tuple[str, ...], output: str, png: bool) -> None:
    """Plot one or more runs in one self-contained HTML page (no network when opened): loss, validation
    loss, lr, grad norm, tokens/s and memory against steps and tokens seen, runs overlaid, their config
    differences and a summary of each (plugins, parallel layout, time, checkpoints).

    \b
    automodel report runs/lr-1e-4 runs/lr-3e-4 -o compare.html --png
    """
    from automodel.report import write_report

    page, image, runs, skipped = write_report(list(run_dirs), output, png=png)
    for note in skipped:
        click.echo(f"warning: skipped {note}", err=True)
    steps = ", ".join(f"{r.name} ({max(r.train)} steps)" for r in runs)
    click.echo(f"wrote {page} ({len(runs)} run(s): {steps})" + (f" and {image}" if image else ""))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one screen and exit 2 (tracebacks with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("AUTOMODEL_DEBUG"))
    if "--debug" in args:  # accepted anywhere (`automodel run cfg.yaml --debug`), and by launched workers
        args = ["--debug", *[a for a in args if a != "--debug"]]
        os.environ["AUTOMODEL_DEBUG"] = "1"
    from automodel.launch import exit_now, in_worker

    if not in_worker():
        _main(args, debug)
        return
    # A launched worker that stops early keeps its process group: leave without interpreter teardown so
    # torchrun sees this exit code (see exit_now). A finished run has torn its process group down itself.
    try:
        _main(args, debug)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        exit_now(e.code if isinstance(e.code, int) else int(e.code is not None))
    except BaseException:
        import traceback

        traceback.print_exc()
        exit_now(1)


def _main(args: list[str], debug: bool) -> None:
    try:
        cli.main(args=args, prog_name="automodel", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except AutomodelError as e:
        if debug:  # the full chain: a plugin's own exception and where it was raised come first
            import traceback

            traceback.print_exc()
            sys.exit(e.exit_code)
        click.echo(f"error: {e}", err=True)
        if e.__cause__ is not None:  # a failure inside a component or library: its traceback can help
            click.echo("(run with --debug for the full traceback)", err=True)
        sys.exit(e.exit_code)
