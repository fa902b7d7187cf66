"""The objects plugins hand to the core, as Protocols: what each kind must have and what it may have.

A factory registered for a kind (see :mod:`automodel.hookspecs`) returns an object that fits one of
these Protocols. Required members have no default here. Optional members have their documented
default in the Protocol's class body, and the core reads them only through :func:`member`, so one
table (this module) says what the loop assumes when a plugin leaves a member out::

    from automodel.contracts import Parallelizer, member

    if member(parallelizer, Parallelizer, "meta_init"):
        ...

Plugins do not need to inherit from these classes (they are structural), but may, to get the
defaults as class attributes and type checking. No torch import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from automodel.kinds import KINDS as _KIND_RECORDS

T = TypeVar("T")


def member(obj: Any, contract: type, name: str) -> Any:
    """``obj.name`` if the object has it, else the default ``contract`` declares for that member.

    Raises ``AttributeError`` for a name the contract does not declare with a default (a required
    member, or a typo in the core): the core never guesses at undeclared members.
    """
    if name not in _optional(contract):
        raise AttributeError(f"{contract.__name__} declares no optional member '{name}'")
    return getattr(obj, name, getattr(contract, name))


def _optional(contract: type) -> set[str]:
    return {k for k, v in vars(contract).items() if not k.startswith("_") and (v is None or not callable(v))}


def missing_members(obj: Any, contract: type) -> list[str]:
    """The required members of ``contract`` that ``obj`` lacks (used by ``plugins --check`` and the kit)."""
    required = [n for n in getattr(contract, "__annotations__", {}) if n not in _optional(contract)]
    required += [n for n, v in vars(contract).items() if callable(v) and not n.startswith("_") and n not in _optional(contract)]
    return [n for n in dict.fromkeys(required) if not hasattr(obj, n)]


# --------------------------------------------------------------------------------------------------
# Factories (the registered callables themselves)
# --------------------------------------------------------------------------------------------------


#: Value types an :class:`ExportOption` may take.
EXPORT_OPTION_TYPES = (bool, str, int, float)


@dataclass(frozen=True)
class ExportOption:
    """An option a component adds to ``automodel export`` (listed in its factory's ``export_options``).

    * ``name``: the key in ``ctx.export_options`` and the flag ``--<name>`` (``_`` written ``-``);
      lowercase letters, digits and ``_``.
    * ``help``: one line for ``automodel export CKPT --help``.
    * ``type``: ``bool`` (a switch, the default), ``str``, ``int`` or ``float`` (``--name VALUE``).
    * ``off``: for a switch, the flag that sets it to ``False`` (``ExportOption("merged",
      off="adapter-only", ...)`` is ``--merged/--adapter-only``).

    An option left off the command line is absent from ``ctx.export_options``: the component's own
    config key decides (``ctx.export_options.get("merged", self.export_merged)``). Options are
    collected from the components in the checkpoint's saved config, so ``automodel export CKPT --help``
    lists those of that run; two components may declare the same option only with the same
    ``type`` and ``off`` (both then read the one value).
    """

    name: str
    help: str
    type: type = bool
    off: str | None = None

    @property
    def flag(self) -> str:
        """``--merged/--adapter-only``, ``--note``: how the option is written on the command line."""
        flag = "--" + self.name.replace("_", "-")
        return f"{flag}/--{self.off}" if self.off else flag

    def problems(self) -> list[str]:
        """What is wrong with this declaration (empty: nothing)."""
        import re

        out = []
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name or ""):
            out.append(f"name {self.name!r} must be lowercase letters, digits and '_' (the flag is --name)")
        if self.type not in EXPORT_OPTION_TYPES:
            out.append(f"type {self.type!r} must be one of bool, str, int, float")
        if self.off is not None and (self.type is not bool or not re.fullmatch(r"[a-z][a-z0-9-]*", self.off)):
            out.append(f"off {self.off!r}: only a bool option has an off flag, written like 'adapter-only'")
        return out


class Factory(Protocol):
    """A registered factory. Optional attributes on the factory (function or class):

    * ``validate_args(args) -> [(key, message, hint), ...]``, or ``validate_args(args, config)``: value
      checks on the YAML arguments, run by ``automodel validate`` before anything heavy. ``args`` are
      the section's keys (``name`` left out); ``config`` (only if the function takes a second
      parameter) is the whole resolved config, every section filled in, to check one section against
      another. ``key`` is relative to the section and is reported with its prefix (``"gamma"`` in
      ``loss:`` is shown as ``loss.gamma``), ``""`` for the section itself. It runs only when the
      section's keys passed the signature checks (types, unknown and missing keys), so ``args`` are
      well-typed. Each item may also be an :class:`automodel.errors.Problem` (key relative to the
      section); :func:`automodel.errors.as_problems` turns either form into ``Problem`` objects.
    * ``path_args``: names of arguments that are local paths; the saved config holds them absolute.
    * ``export_options``: :class:`ExportOption` items this component adds to ``automodel export`` (read
      from the factory of a model loader, a transform or a checkpointer: the components an export
      builds). The values given on the command line reach every component as ``ctx.export_options``.
    * ``model_config(args) -> dict | None`` (model loaders): the architecture fields (``config.json``
      keys: ``num_attention_heads``, ``num_hidden_layers``, ...) of the model the section's ``args``
      describe, read without torch, weights or network; ``None`` when that cannot be known before
      loading (a hub id). Parallelizers' ``validate_model`` checks receive it (see
      :func:`automodel.architecture.model_architecture`), so no plugin reads another's config keys.
    * ``tokenizer_dir(args) -> str | None`` (model loaders): the local directory of the tokenizer files the
      loader will load for these ``args`` (``tokenizer.json``, ``tokenizer_config.json``, ...), known
      without loading anything; ``None`` when it is not local (a hub id) or not a directory. Checks
      that read tokenizer files before launch (distillation's vocabulary comparison, the chat dataset's
      template check) ask it through :func:`automodel.architecture.model_tokenizer_dir`.
    """

    validate_args: Callable[..., list[tuple[str, str, str]]] | None = None
    path_args: Sequence[str] = ()
    export_options: Sequence[ExportOption] = ()
    model_config: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    tokenizer_dir: Callable[[dict[str, Any]], str | None] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class Transform(Protocol):
    """A model transform (``transforms:``): LoRA, FP8, activation checkpointing, ...

    Required: ``apply(model, ctx) -> model``, called in config order before any parallelizer. With
    ``ctx.meta_init`` the model is on the meta device and should stay there.

    Optional (``None``: not provided):

    * ``export(model, tokenizer, out_dir, ctx)``: write the final export instead of the checkpointer's
      full-weights export (LoRA writes an adapter directory). Called on every rank.
    * ``checkpoint_key(name) -> str | None``: the name in the pretrained files of the weight ``name``
      of the transformed model, ``None`` for a weight no file holds (meta-device loading).
    * ``init_weights(model, full_size)``: initialize the weights no file holds, after loading (meta only).
    * ``metrics() -> dict``: numbers merged into every logged step (``compile``: ``compile_s``,
      ``recompiles``); a ``compile_s`` (cumulative seconds spent compiling) is kept out of ``tokens_per_s``.
    * ``after_optimizer_step(model, ctx)``: called on every rank right after each optimizer step (before
      the step is logged and its ``on_step_end`` hooks run), with the training model as wrapped: per-step work the transform
      owns (fp8 with torchao's FP8 all-gather precomputes the next step's weight scales here). State it
      needs lives on the transform object itself.
    * ``plan_memory(model, ctx) -> {name: bytes}`` and ``plan_unsupported`` (text): see :data:`PLAN_MEMBERS`.

    What ``export`` and ``apply`` do may also depend on ``automodel export`` options the transform's
    factory declares (``export_options``, see :class:`Factory` and :class:`ExportOption`): their values
    are in ``ctx.export_options``.
    """

    export: Callable[..., None] | None = None
    checkpoint_key: Callable[[str], str | None] | None = None
    init_weights: Callable[..., None] | None = None
    metrics: Callable[[], dict[str, Any]] | None = None
    after_optimizer_step: Callable[[Any, Any], None] | None = None
    plan_memory: Callable[[Any, Any], dict[str, int]] | None = None
    plan_unsupported: str | None = None

    def apply(self, model: Any, ctx: Any) -> Any: ...


@runtime_checkable
class Parallelizer(Protocol):
    """A parallelizer (``parallel:``) owning one mesh dimension.

    Required: ``dim`` (``pp``, ``dp_replicate``, ``dp_shard``, ``ep``, ``cp`` or ``tp``), ``size`` (``None``: the ranks
    the others leave) and ``apply(model, mesh, ctx) -> model``.

    Optional:

    * ``meta_init = False``: ask the loader to build the model on the meta device; the core
      materializes and loads the weights after every parallelizer has run.
    * ``param_device = None``: where sharded parameters live when materialized (``"cpu"`` for CPU
      offload); ``None`` is the compute device.
    * ``exclusive = None``: a reason (text) why this parallelizer cannot share the model with any other
      (DDP replicates a plain module); :func:`automodel.mesh.plan_layout` refuses such combinations
      before launch, quoting the reason.
    * ``validate_model(model_cfg)`` or ``validate_model(model_cfg, architecture) -> [(message, hint), ...]``:
      checks of the model against this layout (``size`` already resolved), run before launch; items may
      also be ``Problem`` objects. ``architecture`` (passed when the method takes a second parameter) is
      the model's ``config.json`` fields as its loader declares them (the loader factory's
      ``model_config``; a vision-language model's text config), or ``None`` when the loader cannot tell
      before loading: read heads, layers or experts there, not the loader's own keys.
    * ``grad_sync(model, enabled) -> context manager | None``: called around each micro-batch's forward
      and backward with ``enabled=False`` for all but the last micro-batch of a step, so a data-parallel
      wrapper can skip the gradient all-reduce there (FSDP2: ``set_requires_gradient_sync``; DDP:
      ``no_sync()``). ``None``: gradients are synchronised on every micro-batch (correct, only slower).
    * ``forward_backward(model, micro, loss, ctx, backward=True) -> loss_sum | None``: run the forward
      (and, with ``backward``, the backward) of one optimizer step over ``micro`` (this rank's
      micro-batches, on the device) instead of the loop's micro-batch loop: a pipeline schedule
      (automodel-pp). ``loss`` is a :class:`automodel.train.StepLoss`: ``loss(batch, logits=...)`` is the
      configured loss of one micro-batch, normalized by the step's label tokens (``loss.num_label_tokens``);
      backpropagate ``loss * ctx.dp_size`` (data-parallel wrappers average gradients). Return the summed
      loss (0-d tensor) as the loop would, the same on every rank of one model replica, or ``None`` to
      leave this step to the loop. ``backward=False`` is validation (under ``no_grad``, one micro-batch,
      ``num_label_tokens`` 1: return the loss sum). Gradient clipping, the optimizer, logging and
      checkpoints stay in the loop. Used only in a multi-process run (a mesh exists).
    * ``clip_grad_norm(params, max_norm) -> total_norm``: clip the gradients of ``params`` (the trainable
      parameters this rank holds, with ``params.names``) to a total norm over the whole model, and return
      that norm (a 0-d tensor), instead of ``torch.nn.utils.clip_grad_norm_`` over this rank's parameters
      (a pipeline stage holds only part of the model). Only used together with ``forward_backward``.
    * ``plan_memory(model, ctx) -> {name: bytes}`` and ``plan_unsupported`` (text): see :data:`PLAN_MEMBERS`.
    """

    dim: str
    size: int | None
    meta_init: bool = False
    param_device: str | None = None
    exclusive: str | None = None
    validate_model: Callable[..., list[tuple[str, str]]] | None = None
    grad_sync: Callable[[Any, bool], Any] | None = None
    forward_backward: Callable[..., Any] | None = None
    clip_grad_norm: Callable[[Any, float], Any] | None = None
    plan_memory: Callable[[Any, Any], dict[str, int]] | None = None
    plan_unsupported: str | None = None

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any: ...


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


#: How a transform, parallelizer or loss takes part in ``automodel plan`` (docs/plan.md), beyond what the
#: plan measures itself (it runs one training step of the built model on fake tensors, so most
#: components need nothing):
#:
#: * ``plan_memory(model, ctx) -> {name: bytes}``: memory per rank the fake step cannot see (a teacher
#:   model a loss loads in ``setup``, which the plan does not run; communication buffers outside torch);
#:   called after the step with the fake model and the plan's Context (``ctx.extras["plan"]`` is True).
#:   Each entry is added to the peak and printed with its name.
#: * ``plan_unsupported``: text saying what the plan cannot estimate for this component; printed as
#:   ``not estimated: ...`` (never guessed).
PLAN_MEMBERS = ("plan_memory", "plan_unsupported")


#: What the loop can pass a loss, by keyword. A loss receives only the names its ``__call__`` accepts
#: (all of them when it takes ``**kwargs``): see :class:`Loss` and :func:`accepted_kwargs`.
LOSS_ARGUMENTS = ("labels", "num_label_tokens", "logits", "hidden_states", "lm_head_weight", "batch", "model", "ctx")


@runtime_checkable
class Loss(Protocol):
    """A loss (``loss:``), used for training and for ``val_loss`` (the same object, under ``no_grad``).

    Called with keyword arguments only, and only those its ``__call__`` signature names (all of them
    if it takes ``**kwargs``):

    * ``labels``: the shifted labels ``[batch, seq]``, ``-100`` is ignored;
    * ``num_label_tokens``: the label tokens of the whole global batch (all micro-batches and
      data-parallel ranks), a 0-d float tensor;
    * ``logits``: ``[batch, seq, vocab]``; or, when ``uses_hidden_states``, ``hidden_states``
      ``[batch, seq, hidden]`` and ``lm_head_weight`` ``[vocab, hidden]`` instead (no logits computed);
    * ``batch``: the micro-batch dict on the device, as collated (``input_ids``, ``attention_mask`` or
      ``position_ids``, the shifted ``labels`` and any extra columns a dataset's ``collate`` adds);
    * ``model``: the training model as wrapped (FSDP, DDP, PEFT ...);
    * ``ctx``: the :class:`~automodel.context.Context`.

    Returns a scalar tensor: the *sum* of token losses divided by ``num_label_tokens``, so that every
    split of the global batch gives the same gradient.

    Optional:

    * ``uses_hidden_states = False``: ``True`` makes the loop skip the logits and pass the final hidden
      states and the lm_head weight (fused linear cross-entropy).
    * ``logits_at_labels = False``: ``True`` says the loss reads logits only where ``labels != -100``;
      the loop then asks the model for those positions alone (transformers' boolean ``logits_to_keep``,
      so ``lm_head`` skips prompt and padding tokens) and passes ``logits`` ``[label tokens, vocab]``
      with ``labels`` ``[label tokens]``. The loop falls back to full logits where the model cannot
      (no boolean ``logits_to_keep``, tensor/context/pipeline parallel, a compiled whole model).
    * ``setup(model, ctx) -> None``: called once on every rank after the model is built, transformed
      and parallelized and the data is set up (``ctx.total_steps`` is known), before the optimizer is
      built (a distillation loss loads its teacher here).
    * ``plan_stand_in() -> Loss``: a loss ``automodel plan`` runs in this one's place, with the same
      memory behaviour, for a loss whose kernels cannot run on fake tensors (``triton_ce`` returns its
      pure-PyTorch twin ``chunked_ce``).
    * ``plan_memory(model, ctx) -> {name: bytes}`` and ``plan_unsupported`` (text): see :data:`PLAN_MEMBERS`.
    """

    uses_hidden_states: bool = False
    logits_at_labels: bool = False
    setup: Callable[[Any, Any], None] | None = None
    plan_stand_in: Callable[[], Any] | None = None
    plan_memory: Callable[[Any, Any], dict[str, int]] | None = None
    plan_unsupported: str | None = None

    def __call__(self, *, labels: Any, num_label_tokens: Any, logits: Any = None, hidden_states: Any = None,
                 lm_head_weight: Any = None, batch: Any = None, model: Any = None, ctx: Any = None) -> Any: ...


def accepted_kwargs(fn: Any, names: Sequence[str]) -> tuple[str, ...]:
    """The ``names`` that ``fn`` accepts as keyword arguments (all of them if it takes ``**kwargs``).

    The loop calls a loss with exactly these, so a loss names what it needs and nothing else."""
    import inspect

    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return tuple(names)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return tuple(names)
    ok = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return tuple(n for n in names if n in ok)


@runtime_checkable
class Dataset(Protocol):
    """A dataset (``dataset:``, ``validation_dataset:``): map-style, ``len()`` and ``[i]`` giving a dict
    with ``input_ids`` and ``labels`` (lists of int, equal length, unshifted, ``-100`` = no loss), and
    optionally ``position_ids`` (packed rows: positions restart at 0 for each packed sample).
    A ``torch.utils.data.IterableDataset`` is accepted for streaming (then ``max_steps`` is required).
    Add BOS yourself if the model expects it (the builtin datasets add the tokenizer's BOS).

    Optional:

    * ``evaluate(model, ctx) -> dict``: a validation dataset that computes its own metrics (multiple-
      choice accuracy, say) instead of the mean token loss; called on every rank in eval mode under
      ``torch.no_grad()``, it returns the same metrics on every rank (keys like ``val_accuracy``).
    * ``collate(examples) -> dict[str, Tensor]``: turn a list of items into a micro-batch, instead of
      the builtin :class:`automodel.data.Collator` (pad, shift labels, masks). It must return
      ``input_ids`` and the *shifted* ``labels`` (``labels[:, i]`` is the target of position ``i``,
      ``-100`` ignored) like the builtin; extra columns (``pixel_values``, a per-token weight) travel
      with the batch. The model's forward receives the columns its signature names (``labels``
      excepted); the loss receives the whole batch as ``batch``.
    """

    evaluate: Callable[[Any, Any], dict[str, Any]] | None = None
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class Checkpointer(Protocol):
    """A checkpointer (``checkpoint:``). Every method is called on every rank.

    Required:

    * ``save(state, step) -> path``: write a complete checkpoint of ``state`` (``model``,
      ``optimizer``, ``lr_scheduler``, ``train_state``) for ``step``.
    * ``load(state) -> step | None``: restore ``state`` in place from the checkpoint to resume from.
    * ``export(model, tokenizer, out_dir)``: consolidated Hugging Face weights + config + tokenizer.

    Optional:

    * ``save_final = True``: checkpoint after the last step.
    * ``export_hf = True``: export ``<output_dir>/hf`` at the end of the run.
    * ``load_model(model, path) -> step``: restore only the model weights from the checkpoint at
      ``path`` (``automodel export``); ``None``: this checkpointer cannot export its checkpoints.
    """

    save_final: bool = True
    export_hf: bool = True
    load_model: Callable[[Any, Path], int] | None = None

    def save(self, state: dict[str, Any], step: int) -> Any: ...

    def load(self, state: dict[str, Any]) -> int | None: ...

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path) -> Any: ...


@runtime_checkable
class Logger(Protocol):
    """A metrics logger (``loggers:``), built on the main rank only.

    ``log(metrics, step)`` receives training records (``loss``, ``grad_norm``, ``lr``,
    ``tokens_per_s``, ``peak_mem_gb``, ``tokens_seen``, ``label_tokens``, ``mfu`` where known) and, on
    validation steps, a separate validation-only record (``val_loss``, ``val_tokens``, ...) for the same
    step. ``close()`` is called once at the end, also after an error or a preemption stop.

    Resuming: loggers are built *after* the checkpoint is restored, so at construction
    ``ctx.train_state.step`` is the step the run resumes from (0 for a fresh run), and
    ``ctx.train_state.metadata`` holds what the logger stored there in the saved run (a dict carried
    by every checkpoint: keep a run id under your plugin's name to continue the same run). The killed
    run may have logged steps after its last checkpoint; they are trained and logged again, so a logger
    that writes a file or a database drops (or overwrites) its records after
    ``ctx.train_state.step``: a resumed run ends with exactly one record per step (the builtin
    ``jsonl`` logger does this).

    Failing: a ``log`` or ``close`` that raises disables this logger for the rest of the run with a
    warning that names it (plugin, config key, step); training goes on, and the run ends with the
    warning repeated (exit code 0 if training finished).
    """

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Launcher(Protocol):
    """A launcher (``launcher:``): ``launch(job) -> exit code``.

    Optional:

    * ``world_size = None``: the number of training processes it will start, when known before launch
      (lets ``validate`` check mesh and batch sizes).
    * ``preview(job) -> None``: print what ``launch`` would start without starting it
      (``automodel run --dry-run``); ``None``: no dry run.
    """

    world_size: int | None = None
    preview: Callable[[Any], None] | None = None

    def launch(self, job: Any) -> int: ...


class PluginModule(Protocol):
    """A plugin module (entry point or ``--plugin``). Besides its ``@hookimpl`` functions it may define:

    * ``check_requirements() -> [problem, ...]``: what ``automodel plugins --check`` should report
      (a missing optional dependency, a binary not on PATH), each with its fix. ``None``: nothing to check.
    """

    check_requirements: Callable[[], list[str]] | None = None


#: The contract of each registered kind's returned object (None: a torch object or a tuple), from
#: :data:`automodel.kinds.KINDS`.
CONTRACTS: dict[str, type | None] = {k.name: globals()[k.contract] if k.contract else None for k in _KIND_RECORDS}
