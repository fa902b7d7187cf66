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


class AutomodelGroup(click.Group):
    """A click group that adds the plugins' commands (``register_commands``) on first use."""

    _plugin_commands_loaded = False

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
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd


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


def _prepare(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], world_size: int | None = None) -> tuple[Any, Any]:
    """Load, override, load plugins, validate. Returns (:class:`automodel.config.Validated`, plugins)."""
    from automodel import config as config_mod
    from automodel.plugins import load_plugins

    raw = config_mod.load(config_path, overrides)
    local = list(plugin_modules) + [m for m in raw.get("plugins") or [] if isinstance(m, str)]
    plugins = load_plugins(local)
    plugins.raise_on_failures()
    return config_mod.validate(raw, plugins, source=config_path, world_size=world_size), plugins


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@plugin_option
@click.option("--dry-run", is_flag=True, help="Validate, then show what the launcher would start (e.g. the sbatch script) without starting it.")
def run(config_path: str, overrides: tuple[str, ...], plugin_modules: tuple[str, ...], dry_run: bool = False) -> None:
    """Validate CONFIG (with overrides) and train, through the configured launcher."""
    from automodel import config as config_mod
    from automodel.contracts import Launcher, member
    from automodel.launch import Job, in_worker

    if in_worker():
        validated, plugins = _prepare(config_path, overrides, plugin_modules, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        from automodel.train import train

        train(validated.config, plugins, validated.layout)
        return
    validated, plugins = _prepare(config_path, overrides, plugin_modules)
    cfg, launcher = validated.config, validated.launcher
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    saved.write_text(config_mod.dump(cfg))  # the one copy: workers and `automodel export` read it
    job = Job(cfg, saved.resolve(), list(plugin_modules), plugins, validated.layout)
    if dry_run:
        preview = member(launcher, Launcher, "preview")
        if preview is None:
            name = cfg["launcher"].get("name", cfg["launcher"].get("_target_"))
            raise AutomodelError(f"--dry-run: the '{name}' launcher has no dry run; `automodel validate {config_path}` checks the config")
        preview(job)
        return
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
                  ["loss", "dataset", "transform", "parallelizer", "optimizer", "lr_scheduler", "checkpointer",
                   "launcher", "logger", "model_loader", "hook", "command"]) + ". Default: loss.")
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


@cli.command(name="export")
@click.argument("checkpoint", metavar="CKPT", type=click.Path(exists=True))
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--merged/--adapter-only", "merged", default=None,
              help="LoRA runs: also write the merged model to OUT/merged, or only the adapter (default: the run's export_merged).")
@plugin_option
def export_cmd(checkpoint: str, out_dir: str, merged: bool | None, plugin_modules: tuple[str, ...]) -> None:
    """Write a Hugging Face model (safetensors + index + config + tokenizer) from a training checkpoint.

    CKPT is a step_<N> directory, a checkpoint directory or a run directory (its newest complete
    checkpoint). The model is rebuilt from the checkpoint's config.yaml on CPU; OUT loads with
    transformers.AutoModelForCausalLM.from_pretrained. A LoRA run writes a PEFT adapter directory
    (peft.PeftModel.from_pretrained loads it) and, with --merged, the merged model in OUT/merged.
    """
    from automodel.model import export_checkpoint

    extras = {} if merged is None else {"export_merged": merged}
    out = export_checkpoint(checkpoint, out_dir, plugin_modules, extras=extras)
    click.echo(f"exported {checkpoint} to {out}")


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
        click.echo("(run with --debug for the full traceback)", err=True)
        sys.exit(e.exit_code)
