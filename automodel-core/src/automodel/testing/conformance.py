"""Conformance checks for a plugin: does everything it registers do what the core will ask of it?

    from automodel.testing import check_plugin

    def test_conformance():
        check_plugin("my_plugin")          # raises AssertionError listing every problem

:func:`check_plugin` loads the installed plugins (as ``automodel`` does), then for each component the
plugin registers: imports it, checks its signature against the way the core calls its kind and builds
it (with ``args[name]`` as its config, or its defaults), then checks the object against its contract
(:mod:`automodel.contracts`) and its kind's behaviour:

==============  =================================================================================
loss            called as the loop calls it (the keyword arguments its ``__call__`` names: labels,
                num_label_tokens, logits or hidden_states + lm_head_weight, batch, model (a tiny
                Llama), ctx; ``setup(model, ctx)`` first if it has one): finite scalar,
                differentiable, no gradient where ``labels == -100``, the same loss sum and
                gradients however the batch is split into micro-batches
dataset         ``len() > 0``; items have ``input_ids`` and ``labels``, lists of int of equal length
                (and ``position_ids`` of the same length if present); labels are ids or ``-100``; a
                ``collate(items)`` returns ``input_ids`` and ``labels`` tensors of one shape, the labels
                shifted by one as the builtin collator shifts them. Built with ``tokenizer`` (default:
                a character tokenizer; a VLM dataset needs the model's processor)
logger          ``log`` takes a training record and a validation-only record (``val_loss``,
                ``val_tokens``) for the same step, then ``close()``
transform       ``apply(model, ctx)`` returns a model that still runs forward and backward
parallelizer    ``dim`` is a mesh dimension, ``size`` is ``None`` or an int; with
                ``distributed=True``, a 2-process gloo run has the losses of a 1-process run
checkpointer    ``save`` then ``load`` restores the model, optimizer and train state
optimizer       steps the parameters; lr scheduler: ``total_steps`` steps with a finite lr
launcher        has ``launch``; model loader: returns ``(model, tokenizer)`` (needs ``args``) that
                run; when the tokenizer is a processor (it has an ``image_processor``): a chat with
                an image, processed by it, runs through the model, and a different image changes
                the logits
==============  =================================================================================

A component whose factory has required arguments needs them in ``args``; ``skip={name: reason}``
leaves one out (the reason is kept in the report). Runs on CPU in seconds.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
import math
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automodel.mesh import DIM_ORDER
from automodel.testing import TINY_LLAMA, VOCAB_SIZE

MESH_DIMS = DIM_ORDER  # the mesh dimensions a parallelizer may own (automodel.mesh)


@dataclass
class Report:
    """What :func:`check_plugin` checked, skipped and found wrong."""

    plugin: str
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"check_plugin('{self.plugin}'): {len(self.checked)} checked, {len(self.skipped)} skipped, "
                 f"{len(self.problems)} problem(s)"]
        lines += [f"  ok: {c}" for c in self.checked] + [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


class _Skip(Exception):
    pass


class CheckFailed(AssertionError):
    """A component does not do what its kind must (raised by the checks, not by the component)."""


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_plugin(
    name: str,
    *,
    args: dict[str, dict[str, Any]] | None = None,
    skip: dict[str, str] | None = None,
    distributed: bool = False,
    local_modules: tuple[str, ...] = (),
    raise_on_problems: bool = True,
    batch_columns: dict[str, dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> Report:
    """Check every component plugin ``name`` (plugin, distribution or module name) registers.

    ``args`` maps a component name (or ``"kind/name"``) to its config arguments; ``skip`` maps one to
    the reason it is not run; ``distributed=True`` adds the 2-process parity check of parallelizers
    (a tiny training run with gloo, about a minute); ``local_modules`` load unpackaged plugins as
    ``--plugin`` does; ``batch_columns`` maps a loss name to extra columns of the ``batch`` it receives
    (tensors with a leading dimension of 4 rows, e.g. ``{"my_loss": {"weight": torch.ones(4, 8)}}``);
    ``config`` is the whole config a ``validate_args(args, config)`` receives (default: every section's
    default, the tiny Llama as ``model: {name: hf, config: ...}``, the component's own section filled in);
    ``tokenizer`` is what datasets are built with (a tokenizer or a processor, e.g. a VLM's; default: the
    kit's character tokenizer).
    Returns the :class:`Report`; raises ``AssertionError`` with it if anything is
    wrong (unless ``raise_on_problems=False``).
    """
    from automodel.errors import AutomodelError
    from automodel.plugins import load_plugins, unmarked_hooks

    args = args or {}
    skip = skip or {}
    loaded = load_plugins(local_modules)
    info = loaded.info(name)
    report = Report(info.name)
    if info.error:
        report.problems.append(info.failure)
    else:
        report.problems += [f"{info.name}: {p}" for p in unmarked_hooks(loaded.pm.get_plugin(info.name))]
    entries = [e for e in loaded.registry.entries() if e.plugin == info.name]
    with tempfile.TemporaryDirectory(prefix="automodel-check-") as tmp:
        for entry in entries:
            label = f"{entry.kind}/{entry.name}"
            reason = skip.get(label, skip.get(entry.name))
            if reason is not None:
                report.skipped.append(f"{label}: {reason}")
                continue
            try:
                factory = entry.resolve()  # import + signature against the kind
                cfg = dict(args.get(label, args.get(entry.name, {})))
                _KIT_CONFIG.set(_kit_config(entry.kind, entry.name, cfg, config))
                _KIT_TOKENIZER.set(tokenizer)
                where = Path(tmp) / f"{entry.kind}-{entry.name}"
                if entry.kind == "losses":
                    columns = (batch_columns or {}).get(label, (batch_columns or {}).get(entry.name))
                    done = _check_loss(factory, cfg, where, columns)
                else:
                    done = _CHECKS[entry.kind](factory, cfg, where)
                if distributed and entry.kind == "parallelizers":
                    done += "; " + _parity(entry.name, cfg, Path(tmp) / f"parity-{entry.name}", local_modules)
                report.checked.append(f"{label}: {done}")
            except _Skip as e:
                report.problems.append(f"{label}: {str(e).replace(repr('<name>'), repr(entry.name))}")
            except AutomodelError as e:
                report.problems.append(f"{label}: {e}")
            except CheckFailed as e:
                report.problems.append(f"{label}: {e}")
            except Exception as e:  # the component itself raised: show where
                tb = traceback.format_exception(type(e), e, e.__traceback__)
                report.problems.append(f"{label}: raised {type(e).__name__}: {e}\n" + "".join(tb[-3:]).rstrip())
    if raise_on_problems and report.problems:
        raise AssertionError(str(report))
    return report


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


_KIT_CONFIG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("kit_config", default=None)
_KIT_TOKENIZER: contextvars.ContextVar[Any] = contextvars.ContextVar("kit_tokenizer", default=None)


def _kit_config(kind: str, name: str, cfg: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The whole config ``validate_args(args, config)`` sees in the kit: ``given``, or every section's
    default with the tiny Llama as the model; the component's section holds it either way."""
    from automodel import config as config_mod

    if given is not None:
        full = copy.deepcopy(given)
    else:
        full = {}
        for key, spec in config_mod.SECTIONS.items():
            default = getattr(spec, "default", None)
            full[key] = copy.deepcopy(default if not isinstance(default, tuple) else list(default))
        full["step_scheduler"] = {}
        full["model"] = {"name": "hf", "config": dict(TINY_LLAMA)}
        full["dataset"] = {"name": "mock", "seq_len": 8}
    for key, spec in config_mod.SECTIONS.items():
        if getattr(spec, "kind", None) == kind:
            section = {"name": name, **cfg}
            if isinstance(full.get(key), list) or isinstance(spec, config_mod.ComponentList):
                full[key] = [section]
            else:
                full[key] = section
            break
    return full


def _build(factory: Any, cfg: dict[str, Any], *leading: Any, **extra: Any) -> Any:
    """factory(*leading, **extra, **cfg), or a clear request for the required arguments."""
    from automodel.config import check_arguments

    sig = inspect.signature(factory)
    skip_names = len(leading)
    P = inspect.Parameter
    params = [p for p in sig.parameters.values() if p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL)][skip_names:]
    missing = [p.name for p in params if p.default is P.empty and p.name not in cfg and p.name not in extra]
    if missing:
        raise _Skip(f"needs the config arguments {', '.join(missing)}: pass check_plugin(..., "
                    f"args={{'<name>': {{{', '.join(repr(m) + ': ...' for m in missing)}}}}})")
    problems = check_arguments(factory, cfg, "args", tuple(f"_{i}" for i in range(len(leading))) + tuple(extra),
                               config=_KIT_CONFIG.get())
    if problems:
        raise CheckFailed("; ".join(map(str, problems)))
    return factory(*leading, **extra, **cfg)


def _ctx(directory: Path) -> Any:
    from automodel.context import Context
    from automodel.state import TrainState

    directory.mkdir(parents=True, exist_ok=True)
    return Context(output_dir=directory, device="cpu", train_state=TrainState(), total_steps=4,
                   config={"output_dir": str(directory)})


def _tiny_model(seed: int = 0) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY_LLAMA)
    model_type = spec.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec))


def _missing(obj: Any, kind: str) -> None:
    from automodel.contracts import CONTRACTS, missing_members

    contract = CONTRACTS.get(kind)
    if contract is not None:
        lacks = missing_members(obj, contract)
        _expect(not lacks, f"the object returned lacks {', '.join(lacks)} (automodel.contracts.{contract.__name__})")


# --------------------------------------------------------------------------------------------------
# per kind
# --------------------------------------------------------------------------------------------------


def _check_loss(factory: Any, cfg: dict[str, Any], tmp: Path, batch_columns: dict[str, Any] | None = None) -> str:
    """Call the loss as the loop does (:func:`loss_call`): with the keyword arguments its ``__call__``
    names, ``batch`` holding ``input_ids``, ``attention_mask``, ``labels`` and ``batch_columns``."""
    import torch

    from automodel.contracts import Loss, member

    loss_fn = _build(factory, cfg)
    _expect(callable(loss_fn), "a loss factory must return a callable")
    gen = torch.Generator().manual_seed(0)
    B, T, V, H = 4, 8, VOCAB_SIZE, 16
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[:, :2] = -100
    labels[0, -3:] = -100
    n = (labels != -100).sum()
    hidden_mode = bool(member(loss_fn, Loss, "uses_hidden_states"))
    x = torch.randn(B, T, H if hidden_mode else V, generator=gen, requires_grad=True)
    w = (torch.randn(V, H, generator=gen) * 0.2).requires_grad_(hidden_mode)
    batch = {"input_ids": torch.randint(0, V, (B, T), generator=gen), "attention_mask": torch.ones(B, T, dtype=torch.long),
             "labels": labels, **(batch_columns or {})}
    ctx = _ctx(tmp)
    setup = member(loss_fn, Loss, "setup")
    model = _tiny_model() if setup is not None or "model" in _accepted(loss_fn) else None  # built only if used
    if setup is not None:
        setup(model, ctx)

    def call(rows: slice) -> Any:
        out = {"hidden_states": x[rows], "lm_head_weight": w} if hidden_mode else {"logits": x[rows]}
        return loss_call(loss_fn, labels=labels[rows], num_label_tokens=n, model=model, ctx=ctx,
                         batch={k: v[rows] for k, v in batch.items()}, **out)

    full = call(slice(None))
    _expect(isinstance(full, torch.Tensor) and full.numel() == 1, f"must return a scalar tensor, got {full!r}")
    _expect(torch.isfinite(full).all(), f"loss is not finite: {full}")
    _expect(full.requires_grad, "loss is not differentiable (no grad_fn)")
    full.backward()
    grad = x.grad.clone()
    _expect(torch.isfinite(grad).all(), "gradient is not finite")
    _expect(grad.abs().sum() > 0, "gradient is zero everywhere")
    masked = labels == -100
    _expect(grad[masked].abs().max() == 0, "positions with labels == -100 get a gradient: ignore_index -100 not respected")
    x.grad = None
    parts = call(slice(0, 1)) + call(slice(1, 4))
    parts.backward()
    _expect(torch.allclose(parts, full, rtol=1e-4, atol=1e-5), (
        f"split batch gives {parts.item():.6f}, whole batch {full.item():.6f}: divide the summed token losses by "
        "num_label_tokens (the global count), not by this micro-batch's tokens"))
    _expect(torch.allclose(x.grad, grad, rtol=1e-3, atol=1e-6), "gradients differ when the batch is split")
    mode = "hidden states + lm_head weight" if hidden_mode else "logits"
    extra = [a for a in ("batch", "model", "ctx") if a in _accepted(loss_fn)]
    takes = f", takes {'/'.join(extra)}" if extra else ""
    return f"finite, differentiable ({mode}{takes}), -100 ignored, same loss and gradient for a split batch"


def _accepted(loss_fn: Any) -> tuple[str, ...]:
    from automodel.contracts import LOSS_ARGUMENTS, accepted_kwargs

    return accepted_kwargs(loss_fn, LOSS_ARGUMENTS)


def loss_call(loss_fn: Any, **given: Any) -> Any:
    """Call ``loss_fn`` as the training loop does: with those of ``given`` (``labels``,
    ``num_label_tokens``, ``logits`` or ``hidden_states`` + ``lm_head_weight``, ``batch``, ``model``,
    ``ctx``) that its ``__call__`` names, all of them if it takes ``**kwargs``."""
    return loss_fn(**{k: given[k] for k in _accepted(loss_fn) if k in given})


def _check_dataset(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    from automodel.testing import char_tokenizer

    tokenizer = _KIT_TOKENIZER.get()
    ds = _build(factory, cfg, _ctx(tmp), char_tokenizer() if tokenizer is None else tokenizer)
    if hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
        _expect(len(ds) > 0, "the dataset is empty")
        items = [ds[i] for i in range(min(len(ds), 8))]
        what = f"{len(ds)} items"
    else:
        _expect(hasattr(ds, "__iter__"), "a dataset is map-style (len + [i]) or an IterableDataset")
        it = iter(ds)
        items = [next(it) for _ in range(8)]
        what = "iterable"
    for i, item in enumerate(items):
        _expect(isinstance(item, dict) and "input_ids" in item and "labels" in item, (
            f"item {i} must be a dict with input_ids and labels, got {type(item).__name__} {list(item)[:5] if isinstance(item, dict) else ''}"))
        ids, labels = list(item["input_ids"]), list(item["labels"])
        _expect(len(ids) == len(labels) > 0, f"item {i}: input_ids ({len(ids)}) and labels ({len(labels)}) differ in length")
        _expect(all(isinstance(t, int) for t in ids + labels), f"item {i}: input_ids and labels must be lists of int")
        _expect(all(t == -100 or 0 <= t for t in labels), f"item {i}: labels are token ids or -100")
        if "position_ids" in item:
            _expect(len(item["position_ids"]) == len(ids), f"item {i}: position_ids length differs from input_ids")
    _expect(any(t != -100 for item in items for t in item["labels"]), "no item has a label token (all -100)")
    collate = getattr(ds, "collate", None)
    if collate is None:
        return f"{what}; input_ids/labels are equal-length int lists"
    return f"{what}; input_ids/labels are equal-length int lists; " + _check_collate(collate, items[:3])


def _check_collate(collate: Any, items: list[dict[str, Any]]) -> str:
    """``collate(items)``: ``input_ids`` and ``labels`` tensors of one shape, each row the item's ids
    (then padding) and its labels shifted by one (``labels[t]`` is the label of token ``t + 1``), ``-100``
    past the end: what the builtin :class:`automodel.data.Collator` returns."""
    import torch

    batch = collate(items)
    _expect(isinstance(batch, dict) and "input_ids" in batch and "labels" in batch,
            f"collate must return a dict with input_ids and labels, got {type(batch).__name__} "
            f"{list(batch)[:6] if isinstance(batch, dict) else ''}")
    ids, labels = batch["input_ids"], batch["labels"]
    _expect(isinstance(ids, torch.Tensor) and isinstance(labels, torch.Tensor) and ids.shape == labels.shape
            and ids.dim() == 2 and ids.shape[0] == len(items),
            f"collate: input_ids and labels must be [{len(items)}, T] tensors of one shape, got "
            f"{getattr(ids, 'shape', type(ids))} and {getattr(labels, 'shape', type(labels))}")
    for i, item in enumerate(items):
        k = len(item["input_ids"])
        _expect(ids[i, :k].tolist() == list(item["input_ids"]), f"collate: row {i}'s input_ids are not item {i}'s")
        want = list(item["labels"][1:k]) + [-100] * (labels.shape[1] - k + 1)
        _expect(labels[i].tolist() == want, (
            f"collate: row {i}'s labels are not item {i}'s shifted by one (labels[t] must be the label of token "
            "t + 1, -100 at the end and on padding: what automodel.data.Collator returns)"))
    extra = sorted(k for k in batch if k not in ("input_ids", "labels", "attention_mask", "position_ids"))
    return f"collate pads and shifts labels{' (+ ' + ', '.join(extra) + ')' if extra else ''}"


def _check_logger(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    logger = _build(factory, cfg, _ctx(tmp))
    _missing(logger, "loggers")
    logger.log({"loss": 2.5, "grad_norm": 1.0, "lr": 1e-4, "tokens_per_s": 100.0, "tokens_seen": 64,
                "label_tokens": 32, "peak_mem_gb": 0.0}, 1)
    logger.log({"val_loss": 2.4, "val_tokens": 128}, 1)  # a validation-only record for the same step
    logger.log({"loss": 2.0, "grad_norm": 0.9, "lr": 1e-4, "tokens_per_s": 110.0, "tokens_seen": 128,
                "label_tokens": 32, "peak_mem_gb": 0.0}, 2)
    logger.close()
    return "logs training and validation-only records, closes"


def _check_transform(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    import torch

    transform = _build(factory, cfg)
    _missing(transform, "model_transforms")
    model = transform.apply(_tiny_model(), _ctx(tmp))
    _expect(isinstance(model, torch.nn.Module), f"apply must return the model, got {type(model).__name__}")
    ids = torch.randint(0, VOCAB_SIZE, (2, 8))
    logits = model(input_ids=ids).logits
    _expect(logits.shape == (2, 8, VOCAB_SIZE), f"the transformed model's logits have shape {tuple(logits.shape)}")
    logits.float().logsumexp(-1).mean().backward()
    _expect(any(p.grad is not None for p in model.parameters() if p.requires_grad), "no trainable parameter gets a gradient")
    return "apply returns a model that runs forward and backward"


def _check_parallelizer(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    par = _build(factory, cfg)
    _missing(par, "parallelizers")
    _expect(par.dim in MESH_DIMS, f"dim must be one of {', '.join(MESH_DIMS)}, got {par.dim!r}")
    _expect(par.size is None or (isinstance(par.size, int) and par.size >= 1), f"size must be None or an int >= 1, got {par.size!r}")
    return f"dim={par.dim}, size={par.size}"


def _check_checkpointer(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    import torch

    from automodel.state import TrainState

    ckpt = _build(factory, cfg, _ctx(tmp))
    _missing(ckpt, "checkpointers")
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(input_ids=torch.randint(0, VOCAB_SIZE, (2, 8))).logits.sum().backward()
    opt.step()
    sched.step()
    ts = TrainState(step=3, tokens_seen=96, metadata={"check": 1})
    state = {"model": model, "optimizer": opt, "lr_scheduler": sched, "train_state": ts}
    ckpt.save(state, 3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = [s["exp_avg"].clone() for s in opt.state.values()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for s in opt.state.values():
        s["exp_avg"].zero_()
    fresh = TrainState()
    step = ckpt.load({"model": model, "optimizer": opt, "lr_scheduler": sched, "train_state": fresh})
    _expect(step == 3, f"load returned {step!r} after save(state, 3)")
    for k, v in model.state_dict().items():
        _expect(torch.equal(v, saved[k]), f"model weight {k} not restored")
    _expect(all(torch.equal(s["exp_avg"], e) for s, e in zip(opt.state.values(), exp_avg)), "optimizer state not restored")
    _expect((fresh.step, fresh.tokens_seen, fresh.metadata) == (3, 96, {"check": 1}), f"train state not restored: {fresh}")
    return "save/load round-trips model, optimizer and train state"


def _check_optimizer(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    import torch

    w = torch.nn.Parameter(torch.ones(4))
    opt = _build(factory, cfg, [w])
    _expect(isinstance(opt, torch.optim.Optimizer), f"must return a torch.optim.Optimizer, got {type(opt).__name__}")
    (w * torch.arange(4.0)).sum().backward()
    opt.step()
    _expect(not torch.equal(w.detach(), torch.ones(4)), "step() did not change the parameters")
    return "a torch optimizer that steps"


def _check_lr_scheduler(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    sched = _build(factory, cfg, opt, total_steps=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    _expect(all(math.isfinite(lr) and lr >= 0 for lr in lrs), f"lr not finite and >= 0: {lrs}")
    return f"10 steps, lr {lrs[0]:.3g} -> {lrs[-1]:.3g}"


def _check_launcher(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    launcher = _build(factory, cfg)
    _missing(launcher, "launchers")
    return "has launch(job)"


def _check_model_loader(factory: Any, cfg: dict[str, Any], tmp: Path) -> str:
    import torch

    out = _build(factory, cfg, _ctx(tmp))
    _expect(isinstance(out, tuple) and len(out) == 2, "a model loader returns (model, tokenizer)")
    model, tokenizer = out
    _expect(isinstance(model, torch.nn.Module), f"model is a {type(model).__name__}, not a torch.nn.Module")
    if getattr(tokenizer, "image_processor", None) is not None:
        return _check_processor_model(model, tokenizer)
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    _expect(model(input_ids=ids).logits.shape[:2] == ids.shape, "logits do not match the input")
    return "returns (model, tokenizer) that run"


def _check_processor_model(model: Any, processor: Any) -> str:
    """A vision-language loader's (model, processor): a user turn with an image and text, rendered by the
    processor's chat template (or ``image_token`` + text without one) and processed with an image, runs
    through the model; another image gives other logits (the model reads the pixels)."""
    import torch
    from PIL import Image

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "abc"}]}]
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    else:
        token = getattr(processor, "image_token", None)
        _expect(token, f"the {type(processor).__name__} has neither a chat_template nor an image_token: "
                       "a dataset cannot place images in the text")
        text = f"{token}abc"
    logits = []
    for colour in ((220, 40, 40), (40, 80, 220)):
        inputs = processor(text=[text], images=[Image.new("RGB", (32, 32), colour)], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits)
        _expect(logits[-1].shape[:2] == inputs["input_ids"].shape, (
            f"logits {tuple(logits[-1].shape)} do not match the processed input_ids {tuple(inputs['input_ids'].shape)}"))
    _expect(not torch.equal(logits[0], logits[1]), "two different images give the same logits: the image is not used")
    return f"returns (model, {type(processor).__name__}) that run on an image + text"


_CHECKS = {
    "losses": _check_loss,
    "datasets": _check_dataset,
    "loggers": _check_logger,
    "model_transforms": _check_transform,
    "parallelizers": _check_parallelizer,
    "checkpointers": _check_checkpointer,
    "optimizers": _check_optimizer,
    "lr_schedulers": _check_lr_scheduler,
    "launchers": _check_launcher,
    "model_loaders": _check_model_loader,
}


def _parity(name: str, cfg: dict[str, Any], tmp: Path, local_modules: tuple[str, ...]) -> str:
    """Train a tiny model 4 steps on 1 process (no parallelizer) and on 2 processes with ``name``:
    the losses must agree."""
    from automodel.testing import make_config, read_metrics, run_cli, tiny_model

    tmp.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model(tmp)
    sched = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 4, "log_every_steps": 1}
    extra = [a for m in local_modules for a in ("--plugin", m)]
    losses = []
    for procs, parallel in ((1, []), (2, [{"name": name, **cfg}])):
        run = tmp / f"np{procs}"
        run.mkdir()
        path = make_config(run, model_dir, step_scheduler=sched, parallel=parallel,
                           launcher={"name": "local", "nproc_per_node": procs})
        run_cli("run", path, *extra, cwd=run)
        losses.append([r["loss"] for r in read_metrics(run / "run")])
    one, two = losses
    _expect(len(one) == len(two) == 4 and all(abs(a - b) <= 2e-3 * max(1.0, abs(a)) for a, b in zip(one, two)), (
        f"2-process losses {two} differ from 1-process {one}"))
    return "2-process gloo run matches 1 process"
