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
@click.option("--check", is_flag=True, help="Also import every registered component and check plugin requirements.")
@plugin_option
def plugins(as_json: bool, check: bool, plugin_modules: tuple[str, ...]) -> None:
    """List plugins, their versions and what they register."""
    from automodel.contracts import PluginModule, member
    from automodel.plugins import load_plugins

    loaded = load_plugins(plugin_modules)
    problems: list[str] = []
    if check:
        for entry in loaded.registry.entries():
            try:
                entry.resolve()
            except AutomodelError as e:
                problems.append(f"{entry.plugin}: {e}")
        problems += core_version_problems(loaded.infos)
        for info in loaded.infos:
            plugin = loaded.pm.get_plugin(info.name)
            doctor = member(plugin, PluginModule, "check_requirements")
            if doctor is not None:
                problems += [f"{info.name}: {msg}" for msg in doctor() or []]
        problems += [f"{i.name}: failed to import: {i.error}" for i in loaded.failed]
    if as_json:
        data = [
            {
                "name": i.name, "module": i.module, "source": i.source, "distribution": i.dist,
                "version": i.version, "error": i.error, "registers": i.registers, "hooks": i.hooks,
            }
            for i in loaded.infos
        ]
        click.echo(json.dumps({"plugins": data, "problems": problems} if check else data, indent=2))
    else:
        for i in loaded.infos:
            version = f"{i.dist} {i.version}" if i.dist else i.source
            click.echo(f"{i.name}  ({version}, {i.source})")
            if i.error:
                click.echo(f"    FAILED TO IMPORT: {i.error}")
            for kind, names in i.registers.items():
                click.echo(f"    {kind}: {', '.join(names)}")
            lifecycle = [h for h in i.hooks if h.startswith("on_") or h == "register_commands"]
            if lifecycle:
                click.echo(f"    hooks: {', '.join(lifecycle)}")
        if check:
            click.echo("\n" + ("\n".join(f"problem: {p}" for p in problems) if problems else "all plugins OK"))
    if check and problems:
        sys.exit(2)


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
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        click.echo("(run with --debug for the full traceback)", err=True)
        sys.exit(e.exit_code)
