"""Building the model of a run (loader -> transforms -> parallelizers -> weights) and exporting it.

``automodel run`` and ``automodel export`` share both: a run's final export and an export from a
checkpoint write the same thing, through the same transforms and the configured checkpointer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automodel.bound import Bound, bind_validated
from automodel.context import Context
from automodel.contracts import Checkpointer, Parallelizer, Transform, member
from automodel.errors import AutomodelError
from automodel.export_options import check_export_options, export_options_of
from automodel.mesh import Layout
from automodel.weights import materialize


@dataclass
class BuiltModel:
    """The model (wrapped by its parallelizers), its tokenizer and the transforms applied to it."""

    model: Any
    tokenizer: Any
    transforms: list[Any] = field(default_factory=list)


def build_model(loader: Bound, transforms: list[Bound], ctx: Context, layout: Layout | None = None) -> BuiltModel:
    """Load the model with the bound ``loader`` (on meta when ``ctx.meta_init``), apply the bound
    ``transforms`` in config order, then the layout's parallelizers innermost first (when there is a
    mesh), then materialize and load weights. The loop passes ``run.one("model")``,
    ``run.many("transforms")``; code holding a config dict binds them with :func:`bind_model`."""
    if loader.section.get("attn_implementation") == "sdpa_packed":  # the core's attention for packed rows
        from automodel.attention import register

        register()
    model, tokenizer = loader.build(ctx=ctx)
    transforms = [t.build() for t in transforms]
    for t in transforms:
        model = t.apply(model, ctx)
    param_device = None
    if layout is not None and ctx.mesh is not None:
        for p in layout.innermost_first:
            model = p.apply(model, ctx.mesh, ctx)
        param_device = next((d for p in layout.parallelizers if (d := member(p, Parallelizer, "param_device"))), None)
    materialize(model, ctx, transforms, param_device)
    return BuiltModel(model, tokenizer, transforms)


def bind_model(cfg: dict[str, Any], plugins: Any) -> tuple[Bound, list[Bound]]:
    """The bound ``model:`` and ``transforms:`` of a config dict that was validated before (the saved
    config of a run for ``automodel export``, a KD teacher's section): ConfigError if they do not bind."""
    loader = bind_validated(plugins, "model_loaders", cfg.get("model"), "model")
    return loader, [bind_validated(plugins, "model_transforms", t, f"transforms.{i}") for i, t in enumerate(cfg.get("transforms") or [])]


def export_model(built: BuiltModel, checkpointer: Any, ctx: Context, out_dir: str | os.PathLike[str]) -> Path:
    """Write a Hugging Face model directory: a transform that knows better (LoRA: an adapter
    directory) exports itself, otherwise the checkpointer writes full weights. Every rank calls it."""
    out = Path(out_dir)
    template = training_chat_template(ctx.config or {}, ctx)
    if template is not None and built.tokenizer is not None and getattr(built.tokenizer, "chat_template", None) != template:
        built.tokenizer.chat_template = template  # saved with the tokenizer: inference renders what training did
    exporters = [e for t in built.transforms if (e := member(t, Transform, "export")) is not None]
    for export in exporters:
        export(built.model, built.tokenizer, out, ctx)
    if not exporters:
        checkpointer.export(built.model, built.tokenizer, out)
    return out


def training_chat_template(cfg: dict[str, Any], ctx: Context | None = None) -> str | None:
    """The chat template the training data was rendered with: ``dataset.chat_template`` (Jinja text, or a
    file), or None when the dataset has none (the tokenizer's own, if any, is already in its files)."""
    section = cfg.get("dataset")
    template = section.get("chat_template") if isinstance(section, dict) else None
    if not isinstance(template, str) or not template:
        return None
    if "{%" in template or "{{" in template:
        return template
    path = Path(template).expanduser()
    if path.is_file():
        return path.read_text()
    if ctx is not None:
        ctx.print(f"warning: export: dataset.chat_template {template} is gone; the exported tokenizer keeps its own template")
    return None


def find_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` that describes ``checkpoint``: its own, or the run directory's above it."""
    for directory in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (directory / "config.yaml").is_file():
            return directory / "config.yaml"
    raise AutomodelError(f"export: no config.yaml in or above {checkpoint}; give a step_<N> directory, a checkpoint "
                         "directory or a run directory written by automodel run")


def export_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      plugin_modules: list[str] | tuple[str, ...] = (), options: dict[str, Any] | None = None) -> Path:
    """``automodel export``: rebuild the model from the checkpoint's config (loader + transforms, on
    CPU, in this process), restore its weights through the configured checkpointer's ``load_model``,
    and export it like the end of a run. ``options`` (by name) must be export options that the run's
    components declare (:mod:`automodel.export_options`); they reach them as ``ctx.export_options``."""
    from automodel.loading import load_yaml
    from automodel.plugins import load_plugins
    from automodel.runtime import quiet_libraries

    if not os.environ.get("AUTOMODEL_VERBOSE"):
        quiet_libraries()
    path = Path(checkpoint).expanduser()
    cfg = load_yaml(find_config(path))
    plugins = load_plugins(list(plugin_modules) + [m for m in cfg.get("plugins") or [] if isinstance(m, str)])
    plugins.raise_on_failures()
    check_export_options(dict(options or {}), cfg, export_options_of(cfg, plugins))
    ctx = Context(device="cpu", output_dir=Path(out_dir), config=cfg, plugins=plugins, export_options=dict(options or {}))
    built = build_model(*bind_model(cfg, plugins), ctx)
    checkpointer = bind_validated(plugins, "checkpointers", cfg["checkpoint"], "checkpoint").build(ctx=ctx)
    load_model = member(checkpointer, Checkpointer, "load_model")
    if load_model is None:
        name = cfg["checkpoint"].get("name", cfg["checkpoint"].get("_target_"))
        raise AutomodelError(f"export: the '{name}' checkpointer cannot restore a model from its checkpoints (no load_model)")
    load_model(built.model, path)
    return export_model(built, checkpointer, ctx, out_dir)
