"""Every hook automodel calls. The docstrings here are the reference documentation.

Two families:

* **Registration hooks** (``register_*``) run once, when the plugin manager is built. Each receives a
  ``register(name, target, **meta)`` callback owned by the core. ``target`` is either the callable itself
  or a lazy ``"package.module:attr"`` string, so discovering plugins never imports torch. ``meta`` is
  free-form (``description=...`` is shown by ``automodel plugins``). Registering a name twice for the
  same kind is an error that names both plugins.
* **Lifecycle hooks** (``on_*``) are notifications broadcast to every plugin during a run, on every rank.
  Their return values are ignored. A plugin that only needs rank 0 checks ``ctx.is_main``.

All hooks are called with keyword arguments; an implementation may accept any subset of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

    from automodel.context import Context

PROJECT = "automodel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The callback every registration hook receives."""

    def __call__(self, name: str, target: Any, **meta: Any) -> None: ...


# --------------------------------------------------------------------------------------------------
# Registration: models
# --------------------------------------------------------------------------------------------------


@hookspec
def register_model_loaders(register: Register) -> None:
    """Register model loaders, selected by ``model: {name: ...}``.

    A loader is called as ``factory(ctx, **cfg) -> (model, tokenizer)``, where ``cfg`` is the ``model``
    section without ``name``. It returns a ``torch.nn.Module`` causal LM (a ``transformers``
    ``PreTrainedModel`` for the builtin export to work) and its tokenizer. When ``ctx.meta_init`` is true
    (a parallelizer asked for it), the loader should build the model on the ``meta`` device and record
    where its weights come from in ``model.config.name_or_path``; the loop materializes it after
    sharding. The builtin loader is ``hf``. A factory attribute ``model_config(args) -> dict | None``
    declares the model's architecture (``config.json`` fields) from the section's arguments before
    launch, without torch or network (``None``: not known before loading); parallelizers'
    ``validate_model`` checks receive it, so none reads the loader's keys. A factory attribute
    ``tokenizer_dir(args) -> str | None`` declares the local directory of the tokenizer files it will
    load (``None``: not local), for checks that read them before launch (distillation's vocabulary,
    the chat dataset's template).
    """


@hookspec
def register_model_transforms(register: Register) -> None:
    """Register model transforms (LoRA, FP8, activation checkpointing, compile), used in ``transforms:``.

    A transform is called as ``factory(**cfg)`` and the object it returns must have
    ``apply(model, ctx) -> model``. Transforms run in config order, after the model is loaded and
    before any parallelizer (the contract: :class:`automodel.contracts.Transform`). The builtin
    ``activation_checkpointing`` is one. A transform may also define ``export(model, tokenizer, out_dir, ctx)``
    (called on every rank at export; write only on ``ctx.is_main``) to change what the final export
    writes, for example a PEFT adapter directory instead of full weights. Its factory may declare
    options of ``automodel export`` (``export_options = (ExportOption("merged", off="adapter-only",
    help=...),)``, see :class:`automodel.contracts.ExportOption`): ``automodel export CKPT --help`` lists
    those of the run's components, and the values given arrive as ``ctx.export_options`` (by name).
    ``after_optimizer_step(model, ctx)``, if defined, runs on every rank after each optimizer step
    (per-step work the transform owns; keep its state on the transform object).

    With ``ctx.meta_init`` the model ``apply`` receives is on the ``meta`` device; a transform should
    keep it there (no real weights) and let the loop load them after sharding. A transform that renames
    weights or adds new ones (LoRA) tells the loop how, with two optional methods:

    * ``checkpoint_key(name) -> str | None``: the name in the pretrained files of the weight ``name``
      of the model ``apply`` returned (a state-dict key), or ``None`` for a weight no file holds. Several
      weights may name the same entry (each gets its value). Without the method a name is unchanged.
    * ``init_weights(model, full_size)``: called once, after the weights in the files are loaded (or
      randomly initialized as for the model without the transform), to initialize the ``None`` weights.
      ``full_size(*modules)`` is a context manager: inside it the parameters of those modules are whole
      tensors (sharded ones gathered: a collective, so every rank makes the same calls in the same
      order); on exit each rank keeps its shard. Initializing at full size from a fixed seed thus gives
      the same values for any number of ranks. Only called for a model built on ``meta``: otherwise
      ``apply`` initializes its weights itself.
    """


@hookspec
def register_parallelizers(register: Register) -> None:
    """Register parallelizers (``ddp`` builtin; ``fsdp2``, ``tp`` from plugins), used in ``parallel:``.

    A parallelizer is called as ``factory(**cfg)`` and returns an object with:

    * ``dim``: the mesh dimension it owns: ``"pp"``, ``"dp_replicate"``, ``"dp_shard"``, ``"ep"``, ``"cp"``
      or ``"tp"``;
    * ``size``: its degree, or ``None`` to take the ranks the others leave (at most one may);
    * ``apply(model, mesh, ctx) -> model``: parallelize ``model`` over ``mesh[dim]``.

    Optional members (defaults in :class:`automodel.contracts.Parallelizer`): ``meta_init = True`` asks
    the loader to build the model on the meta device, and the loop then materializes and loads the
    weights (:mod:`automodel.weights`) after every parallelizer has run; ``param_device`` (``"cpu"``
    for CPU offload) is where parameters get storage; ``exclusive`` (a reason) refuses any other
    parallelizer next to this one, before launch; ``validate_model(model_cfg, architecture)`` checks the
    model against the layout before launch (``architecture``: what the loader's ``model_config``
    declares, or ``None``); ``forward_backward`` (with ``clip_grad_norm``) runs the forward and
    backward of a whole optimizer step itself (a pipeline schedule, automodel-pp) instead of the loop's
    micro-batch loop. Parallelizers are applied innermost first: ``tp``, ``cp``, ``ep``, ``dp_shard``,
    ``dp_replicate``, except ``pp``, applied first (it cuts this rank's stage out of the model). Data-parallel
    parallelizers are expected to *average* gradients over their ranks (as DDP and FSDP do); the loop
    scales the loss so that the result is the gradient of the global-batch mean.
    """


# --------------------------------------------------------------------------------------------------
# Registration: data, loss, optimization
# --------------------------------------------------------------------------------------------------


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets (``instruction``, ``mock`` builtin), used in ``dataset:``/``validation_dataset:``.

    A dataset is called as ``factory(ctx, tokenizer, **cfg)`` and returns a map-style dataset
    (``__len__``/``__getitem__``) of dicts with ``input_ids`` (list of int) and ``labels`` (list of
    int, same length, ``-100`` where no loss is taken, *not* shifted; optionally ``position_ids`` for
    packed rows), or an ``IterableDataset`` for streaming. Add BOS yourself where the model expects it.
    The loop pads, shifts and batches (:mod:`automodel.data`), unless the dataset has its own
    ``collate(examples) -> dict of tensors`` (extra columns such as ``pixel_values``; it must return
    ``input_ids`` and the *shifted* ``labels`` like the builtin). A validation dataset may define
    ``evaluate(model, ctx) -> metrics`` to compute its own metrics (accuracy). The contract:
    :class:`automodel.contracts.Dataset`.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register losses (``masked_ce`` builtin), used in ``loss:``.

    A loss is called as ``factory(**cfg)``; the object it returns is called with the keyword
    arguments its ``__call__`` names, out of ``labels``, ``num_label_tokens``, ``logits``, ``batch``
    (the collated micro-batch on the device), ``model`` and ``ctx`` (all of them if it takes
    ``**kwargs``), and returns the *sum* of token losses divided by ``num_label_tokens`` (the
    label-token count of the whole global batch, over all micro-batches and data-parallel ranks).
    ``labels`` are already shifted, ``-100`` means ignore. If the object has ``uses_hidden_states =
    True`` the loop never computes logits: it passes the final hidden states ``[batch, seq, hidden]``
    and the lm_head weight ``[vocab, hidden]`` instead (fused linear cross-entropy). With
    ``logits_at_labels = True`` (the builtin ``masked_ce``) the loss reads logits only where labels are: the
    loop asks the model for those positions alone and passes ``logits`` ``[label tokens, vocab]`` with
    ``labels`` ``[label tokens]``, where the model can (else the full tensors). An optional
    ``setup(model, ctx)`` runs once per rank before the optimizer is built (load a teacher there).
    The same loss gives ``val_loss`` in validation. The contract: :class:`automodel.contracts.Loss`.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers (``adamw``, ``sgd`` builtin), used in ``optimizer:``.

    Called as ``factory(params, **cfg)`` with the model's trainable parameters; returns a
    ``torch.optim.Optimizer``.
    """


@hookspec
def register_lr_schedulers(register: Register) -> None:
    """Register learning-rate schedulers (``constant``, ``cosine``, ``linear`` builtin).

    Called as ``factory(optimizer, total_steps=..., **cfg)``; returns a
    ``torch.optim.lr_scheduler.LRScheduler`` stepped once per optimizer step.
    """


# --------------------------------------------------------------------------------------------------
# Registration: infrastructure
# --------------------------------------------------------------------------------------------------


@hookspec
def register_checkpointers(register: Register) -> None:
    """Register checkpointers (``default`` builtin), used in ``checkpoint:``.

    Called as ``factory(ctx, **cfg)``; the object returned has ``save(state, step)``,
    ``load(state) -> step | None`` (restore ``state`` in place from the checkpoint to resume from, or
    return ``None`` to start fresh) and ``export(model, tokenizer, out_dir)`` (write consolidated
    Hugging Face weights). ``state`` is a dict of stateful objects: ``model``, ``optimizer``,
    ``lr_scheduler`` and ``train_state`` (step, epoch and the data position within the epoch, from
    which the sampler resumes; ``metadata`` that plugins need on resume). Every method is called on every
    rank. Optional members (:class:`automodel.contracts.Checkpointer`): ``save_final = True``,
    ``export_hf = True``, and ``load_model(model, path) -> step`` (restore only the weights from a
    checkpoint; ``automodel export`` needs it).
    """


@hookspec
def register_launchers(register: Register) -> None:
    """Register launchers (``local`` builtin; ``slurm`` from a plugin), used in ``launcher:``.

    Called as ``factory(**cfg)``; the object returned has ``launch(job) -> int`` (the exit code).
    ``job`` is an :class:`automodel.launch.Job`: the resolved, validated config, the path of its saved
    copy and the plugin modules to load. A launcher starts ``automodel run <saved config>`` wherever
    the work runs (with ``AUTOMODEL_LAUNCHED=1`` set, so that the worker trains instead of launching).
    Optional (:class:`automodel.contracts.Launcher`): ``world_size`` (known before launch, so
    ``validate`` checks mesh and batch sizes) and ``preview(job)`` (``automodel run --dry-run``).
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register metric loggers (``console``, ``jsonl`` builtin; ``wandb`` from a plugin).

    Called as ``factory(ctx, **cfg)`` on the main rank only, after a resume has restored
    ``ctx.train_state``; the object returned has ``log(metrics: dict, step: int)`` and ``close()``
    (also called when training fails). ``log`` receives training records (``loss``, ``grad_norm``,
    ``lr``, ``tokens_per_s``, ``label_tokens_per_s``, ``tokens_seen``, ``peak_mem_gb``, ``label_tokens``, ``mfu`` when the peak
    FLOP/s is known) and, on validation steps, a separate validation-only record (``val_loss``,
    ``val_tokens``, or a dataset's own ``evaluate`` metrics) for the same step.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``automodel`` CLI: decorate functions with ``@cli.command()``.

    Prefer declaring a command as an entry point instead (``automodel new-plugin NAME --kind command``
    does): ``[project.entry-points."automodel.commands"] my-cmd = "my_pkg.commands:command"`` (a
    ``click.Command``). ``automodel --help`` lists those from the package metadata without importing
    any plugin, and ``automodel my-cmd`` imports that module alone. Commands added by this hook are
    loaded, with every plugin, only when the command name is not found otherwise: they work, but
    ``automodel --help`` does not list them. Keep the module light (no torch import at module level).
    """


# --------------------------------------------------------------------------------------------------
# Lifecycle (broadcast to every plugin, on every rank)
# --------------------------------------------------------------------------------------------------


@hookspec
def on_train_start(ctx: Context, model: Any) -> None:
    """Called once the model is built, transformed, parallelized and restored, before the first step."""


@hookspec
def on_step_end(ctx: Context, step: int, metrics: dict[str, Any]) -> None:
    """Called after every optimizer step. ``metrics`` holds ``lr``; on logging steps (every
    ``step_scheduler.log_every_steps`` and the last) also ``loss``, ``grad_norm``, ``tokens_per_s`` and
    the other logged values. (Reading the loss every step would synchronize with the device.)"""


@hookspec
def on_validation_end(ctx: Context, step: int, metrics: dict[str, Any]) -> None:
    """Called after each validation pass with ``val_loss`` and ``val_tokens``."""


@hookspec
def on_checkpoint_saved(ctx: Context, step: int, path: str) -> None:
    """Called after a checkpoint for ``step`` has been written completely to ``path``."""


@hookspec
def on_train_end(ctx: Context, metrics: dict[str, Any]) -> None:
    """Called once at the end of training (also after an interruption), with the last metrics."""
