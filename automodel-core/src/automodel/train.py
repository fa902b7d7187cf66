"""The training loop. Read :class:`Trainer` top to bottom: setup, then :meth:`Trainer.run`, which calls
:meth:`Trainer.train_step` (accumulate micro-batches through :meth:`Trainer.forward_backward`, clip,
step) once per optimizer step, then logs, validates and checkpoints.

    config -> process group -> mesh -> model (loader, transforms, parallelizers, weights) -> data
    -> optimizer, scheduler -> checkpointer.load -> steps -> final checkpoint + export
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from automodel import runtime
from automodel.bound import Bound, RunPlan
from automodel.context import Context
from automodel.contracts import (
    LOSS_ARGUMENTS,
    Checkpointer,
    Dataset,
    Loss,
    Parallelizer,
    Transform,
    accepted_kwargs,
    member,
)
from automodel.data import Collator, PackedDataset, TrainData, validation_loader
from automodel.errors import AutomodelError
from automodel.faults import ComponentFault, Origin, call_hook, warn
from automodel.launch import REQUEUE_EXIT_CODE
from automodel.loading import dump
from automodel.mesh import DP_DIMS, build_mesh, dp_coordinates
from automodel.model import build_model, export_model
from automodel.plugins import Plugins
from automodel.profiler import Profiler
from automodel.signals import Preempted, StopFlag, clear_marker, write_marker
from automodel.state import TrainState
from automodel.summary import RunSummary
from automodel.weights import unwrap

#: Dense bf16 peak per device, for the MFU estimate (``peak_tflops:`` in the config overrides it).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
NO_BAD_STEP = torch.iinfo(torch.int64).max


def train(run: RunPlan | dict[str, Any], plugins: Plugins | None = None) -> dict[str, Any]:
    """Run one training job in this process (one rank of it). Returns the last metrics. ``run`` is the
    :class:`~automodel.bound.RunPlan` of :func:`automodel.config.validate` (or a config dict: see :class:`Trainer`)."""
    return Trainer(run, plugins).run()


class NamedParameters(list):
    """The trainable parameters as the core passes them to an optimizer factory: a plain ``list`` of
    tensors (what any ``torch.optim`` optimizer takes) whose ``names`` attribute holds each one's name in
    ``model.named_parameters()`` order, so a factory can group them by name (weight decay, lr multipliers)."""

    names: list[str]

    @classmethod
    def of(cls, model: torch.nn.Module) -> NamedParameters:
        """The parameters of ``model`` that require grad, with their names."""
        pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        out = cls(p for _, p in pairs)
        out.names = [n for n, _ in pairs]
        return out

    def named(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(zip(self.names, self))


@dataclass
class StepLoss:
    """The loss of one micro-batch, for a parallelizer that runs forward and backward itself
    (``forward_backward``, a pipeline schedule): ``loss(batch, logits=...)``, or ``loss(batch,
    hidden_states=..., lm_head_weight=...)`` when ``uses_hidden_states``, calls the configured loss as
    the loop does (the keyword arguments it names, normalized by ``num_label_tokens``; faults named)."""

    trainer: Any
    num_label_tokens: torch.Tensor
    uses_hidden_states: bool

    def __call__(self, batch: dict[str, torch.Tensor], **outputs: Any) -> torch.Tensor:
        return self.trainer.loss_of(batch, self.num_label_tokens, **outputs)


@dataclass
class StepResult:
    """What one optimizer step leaves on the device (read on logging steps only: no per-step sync)."""

    loss_sum: torch.Tensor
    grad_norm: torch.Tensor
    label_tokens: torch.Tensor
    lr: float


class Diverged(AutomodelError):
    """The loss or the gradient norm became non-finite."""


class HiddenStates:
    """Captures the decoder's final hidden states so a fused loss never needs the logits."""

    # logits_to_keep: one position (index 0), not zero: a zero-length slice breaks DTensor sharding
    # propagation in a tensor-parallel (ColwiseParallel) lm_head. [batch, 1, vocab] costs nothing.
    EMPTY = torch.zeros(1, dtype=torch.long)

    def __init__(self, model: torch.nn.Module):
        self.value: torch.Tensor | None = None
        model.get_decoder().register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.value = output[0] if isinstance(output, tuple) else output.last_hidden_state


def clip_grad_norm(params: Any, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, also when the gradients are DTensors on different meshes
    (automodel-moe: experts sharded over ``ep``, the rest over ``dp_shard x ep``): each mesh's norm is
    reduced on that mesh, then the norms are combined."""
    groups: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
    if len(groups) <= 1:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    norms = [torch.nn.utils.get_total_norm(grads, foreach=True) for grads in groups.values()]
    total = torch.linalg.vector_norm(torch.stack([n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]))
    if max_norm != float("inf"):
        coef = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        for grads in groups.values():
            torch._foreach_mul_(grads, coef)
    return total


def model_inputs(model: torch.nn.Module) -> frozenset[str] | None:
    """The batch columns the model's forward names (of the Hugging Face model inside a PEFT wrapper),
    so extra columns meant for the loss never reach it; None: it names none, pass every column."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    named = frozenset(n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return named or None


class Trainer:
    """One rank of a training run: everything is built in ``__init__``; :meth:`run` trains.

    ``run`` is the :class:`~automodel.bound.RunPlan` that :func:`automodel.config.validate` returned in
    this process: every component is built from its bound section, with the arguments its kind declares.
    For API callers, a config dict (raw or resolved) with ``plugins`` is validated here, once.
    """

    logits_at_labels = False  # set in __init__ (see _can_keep_label_logits)

    def __init__(self, run: RunPlan | dict[str, Any], plugins: Plugins | None = None, layout: Any = None):
        # ``layout``: ignored, for callers of the old ``Trainer(cfg, plugins, layout)`` (the plan has it)
        if not os.environ.get("AUTOMODEL_VERBOSE"):
            runtime.quiet_libraries()
        if not isinstance(run, RunPlan):  # an API call with a config dict: validated once, here
            if plugins is None:
                raise TypeError("Trainer(config_dict) needs plugins: Trainer(cfg, load_plugins()); or pass the RunPlan of config.validate()")
            from automodel.config import validate

            run = validate(run, plugins, world_size=int(os.environ.get("WORLD_SIZE", 1)), run_targets=True)
        self.plugins = run.plugins
        self.summary = RunSummary()  # the one-line summary at the end (and summary.json)
        self.stop = StopFlag().install()  # SIGTERM/SIGUSR1: checkpoint at the next step boundary, exit 75
        self.ctx = ctx = self._setup_processes(run)  # sets self.run_plan (its layout planned for this world size)
        self.built = build_model(self.run_plan.one("model"), self.run_plan.many("transforms"), ctx, self.layout)  # type: ignore[arg-type]
        self.model = self.built.model.train()
        self.hf_model = unwrap(self.model)
        self.params = NamedParameters.of(self.model)  # the optimizer factory may group them by name
        self.n_params = sum(p.numel() for p in self.model.parameters())
        ctx.print(f"model: {self.n_params / 1e6:.2f}M parameters, {sum(p.numel() for p in self.params) / 1e6:.2f}M "
                  f"trainable, on {ctx.device}")
        self.loss_fn = self._build("loss")
        self.loss_args = accepted_kwargs(self.loss_fn, LOSS_ARGUMENTS)  # the loss gets only what it names
        self.model_inputs = model_inputs(self.hf_model)
        self.hidden = HiddenStates(self.hf_model) if member(self.loss_fn, Loss, "uses_hidden_states") else None
        self.logits_at_labels = self._can_keep_label_logits()  # lm_head only where labels are (masked_ce)
        # a parallelizer that runs forward + backward of a step itself (pipeline schedules); None: the loop does
        self.step_owner = next((p for p in self.layout.parallelizers if ctx.mesh is not None
                                and member(p, Parallelizer, "forward_backward") is not None), None)
        self._setup_data()
        setup = member(self.loss_fn, Loss, "setup")
        if setup is not None:  # after the model is built and parallelized (and the data), before the optimizer
            try:
                setup(self.model, ctx)
            except AutomodelError:
                raise
            except Exception as e:
                raise ComponentFault(self._origin("loss"), "in setup(model, ctx)", exc=e) from e
        self.optimizer = self._build("optimizer", params=self.params)
        self.lr_scheduler = self._build("lr_scheduler", optimizer=self.optimizer, total_steps=ctx.total_steps)
        self.checkpointer = self._build("checkpoint", ctx=ctx)
        self.train_state = ctx.train_state = TrainState()
        self.state = {"model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler,
                      "train_state": self.train_state}
        self.resumed = self._checkpointer_call("loading the checkpoint to resume from", self.checkpointer.load, self.state)
        self.saved_step, self.saved_path = self.resumed, None  # the newest checkpoint of this run (path: if it wrote it)
        if self.resumed is not None:
            ctx.print(f"resumed from step {self.resumed}")
            if self.resumed >= ctx.total_steps:
                ctx.print(f"warning: the checkpoint is at step {self.resumed} and the run ends at step {ctx.total_steps}: "
                          "nothing to train; raise step_scheduler.max_steps (with --allow-config-change) to continue, or use checkpoint.resume=never")
        self._setup_loggers()
        self.peak_flops = self._peak_flops()
        self.profiler = Profiler.create(self.cfg.get("profile"), ctx, self.train_state.step)  # None: off
        self.first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.long, device=ctx.device)
        self.finished = False
        self.window_tokens, self.window_start = torch.zeros((), dtype=torch.long), time.perf_counter()
        self.window_label_tokens = torch.zeros((), dtype=torch.long, device=ctx.device)  # on the device: no sync per step
        self.compile_s_seen = 0.0

    # -- setup ------------------------------------------------------------------------------------

    def _build(self, component: str | Bound, **supplied: Any) -> Any:
        """Build the component of a one-component section (``"loss"``) or a :class:`Bound`, passing the
        arguments its kind declares; a factory that raises is a :class:`ComponentFault` naming it."""
        bound = self.run_plan.one(component) if isinstance(component, str) else component
        assert bound is not None, component
        try:
            return bound.build(**supplied)
        except AutomodelError:
            raise
        except Exception as e:
            raise ComponentFault(bound.origin, "building it", step=None, exc=e) from e

    def _origin(self, key: str) -> Origin:
        """Kind, name, config key and plugin of the component of section ``key`` (for fault messages)."""
        bound = self.run_plan.one(key)
        assert bound is not None, key
        return bound.origin

    def _setup_processes(self, run: RunPlan) -> Context:
        """Device, process group, layout and mesh; the Context every component sees. Sets ``self.run_plan``:
        the bound plan, its layout planned for this world size (already so, unless the launcher could not know it)."""
        cfg = run.config
        device = runtime.device(cfg["device"], int(os.environ.get("LOCAL_RANK", 0)))
        rank, world_size, local_rank = runtime.init_distributed(device)
        torch.manual_seed(cfg["seed"])
        self.run_plan = run = run.for_world_size(world_size)
        self.cfg, self.sched, self.layout = run.config, run.sched, run.layout
        layout = self.layout
        mesh = build_mesh(layout.plan, device.type) if dist.is_initialized() else None
        dp_rank, dp_size = dp_coordinates(mesh, layout.plan)
        ctx = Context(
            rank=rank, world_size=world_size, local_rank=local_rank, device=device, output_dir=Path(cfg["output_dir"]),
            config=cfg, mesh=mesh, dp_rank=dp_rank, dp_size=dp_size, plugins=self.plugins,
            meta_init=mesh is not None and any(member(p, Parallelizer, "meta_init") for p in layout.parallelizers),
        )
        if ctx.is_main:
            ctx.output_dir.mkdir(parents=True, exist_ok=True)
            saved = ctx.output_dir / "config.yaml"
            if not saved.exists():  # `automodel run` saved it before launching; an API call has not
                saved.write_text(dump(cfg))
            clear_marker(ctx.output_dir)
            mesh_text = " x ".join(f"{d}={n}" for d, n in layout.plan.sizes.items()) or "single process"
            print(f"automodel: {ctx.world_size} process(es), mesh {mesh_text}", flush=True)
            print("components: " + ", ".join(run.providers()), flush=True)
        return ctx

    def _setup_data(self) -> None:
        ctx, sched = self.ctx, self.sched
        builtin = Collator(self.built.tokenizer.pad_token_id, getattr(self.hf_model.config, "vocab_size", None))
        train_data = self._build("dataset", ctx=ctx, tokenizer=self.built.tokenizer)
        collate = member(train_data, Dataset, "collate") or builtin  # a dataset's own collate (VLM: pixel_values)
        self.data = TrainData(train_data, collate, sched.local_batch_size, ctx.dp_rank, ctx.dp_size, self.cfg["seed"])
        self.accum = sched.grad_accum_steps(ctx.dp_size)
        per_epoch = self.data.micro_batches_per_epoch()
        steps_per_epoch = per_epoch // self.accum if per_epoch is not None else None
        unit = "packed rows" if isinstance(train_data, PackedDataset) else "examples"  # packing: rows of several examples
        if steps_per_epoch == 0:
            raise AutomodelError(
                f"dataset: {len(train_data)} {unit} make no full step of {sched.global_batch_size} sequences "
                f"(global_batch_size); lower step_scheduler.global_batch_size or add data"
            )
        if steps_per_epoch is None and sched.max_steps is None:
            raise AutomodelError("dataset: a streaming dataset has no length; set step_scheduler.max_steps")
        by_epochs = steps_per_epoch * sched.num_epochs if steps_per_epoch and sched.max_steps is None else sys.maxsize
        ctx.total_steps = min(sched.max_steps or sys.maxsize, by_epochs)
        self.val_data = self.val_loader = None
        if self.run_plan.one("validation_dataset") is not None:
            self.val_data = self._build("validation_dataset", ctx=ctx, tokenizer=self.built.tokenizer)
            if member(self.val_data, Dataset, "evaluate") is None:
                val_collate = member(self.val_data, Dataset, "collate") or builtin
                self.val_loader = validation_loader(self.val_data, val_collate, sched.local_batch_size, ctx.dp_rank, ctx.dp_size)
        size = f"{len(train_data)} {unit}, {steps_per_epoch} steps/epoch" if steps_per_epoch else "streaming"
        ctx.print(
            f"training {ctx.total_steps} step{'s' if ctx.total_steps != 1 else ''}: {sched.global_batch_size} sequences/step = "
            f"{sched.local_batch_size} x {self.accum} accumulation x {ctx.dp_size} data-parallel; {size}"
        )

    def _setup_loggers(self) -> None:
        """The loggers (main rank only), built after the resume: they may read ``ctx.train_state``."""
        ctx = self.ctx
        bounds = self.run_plan.many("loggers") if ctx.is_main else []
        self.loggers = [self._build(b, ctx=ctx) for b in bounds]
        self.logger_origins = {id(lg): b.origin for lg, b in zip(self.loggers, bounds)}
        self.failed_loggers: list[str] = []  # loggers disabled after raising (the run goes on without them)
        if ctx.world_size > 1:  # what loggers stored in train_state.metadata (a run id) is saved by every rank
            box = [self.train_state.metadata]
            dist.broadcast_object_list(box, src=0)
            self.train_state.metadata = box[0]

    def _can_keep_label_logits(self) -> bool:
        """Whether the model can project only the label positions through ``lm_head`` for this loss: the
        loss declares ``logits_at_labels``, the model is a transformers model that slices with a boolean
        ``logits_to_keep`` (``slice_logits_to_keep``), nothing shards the sequence or the vocabulary
        (data-parallel dimensions only) and the model's forward is not compiled as a whole (the number
        of label tokens is a data-dependent shape)."""
        if self.hidden is not None or not member(self.loss_fn, Loss, "logits_at_labels"):
            return False
        if self.model_inputs is None or "logits_to_keep" not in self.model_inputs:
            return False
        slicer = getattr(sys.modules.get(type(self.hf_model).__module__), "slice_logits_to_keep", None)
        if slicer is None:  # transformers before boolean logits_to_keep, or a model that slices its own way
            return False
        plan = self.layout.plan
        if plan is not None and any(n > 1 and dim not in DP_DIMS for dim, n in plan.sizes.items()):
            return False
        return not any(hasattr(m.forward, "_torchdynamo_orig_callable") for m in (self.model, self.hf_model))

    def _peak_flops(self) -> float | None:
        """Peak FLOP/s per device for MFU: ``peak_tflops`` from the config, else the GPU table."""
        if self.cfg.get("peak_tflops"):
            return float(self.cfg["peak_tflops"]) * 1e12
        if self.ctx.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.ctx.device)
        peak = next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)
        if peak is None:
            self.ctx.print(f"mfu: the peak FLOP/s of '{name}' is unknown, so MFU is not logged; "
                           "set peak_tflops: <dense bf16 TFLOP/s of one device> in the config")
        return peak

    # -- one step ---------------------------------------------------------------------------------

    def forward_backward(self, batch: dict[str, torch.Tensor], num_label_tokens: torch.Tensor) -> torch.Tensor:
        """Loss of one micro-batch (normalized by the global label tokens), gradients accumulated."""
        loss = self.forward(batch, num_label_tokens)
        (loss * self.ctx.dp_size).backward()  # DDP / FSDP average over dp ranks; undo that
        return loss.detach()

    def forward(self, batch: dict[str, torch.Tensor], num_label_tokens: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch: the model gets the batch columns its forward names (not
        ``labels``), the loss the keyword arguments its ``__call__`` names (see contracts.Loss)."""
        inputs = {k: v for k, v in batch.items() if k != "labels" and (self.model_inputs is None or k in self.model_inputs)}
        if self.hidden is not None:
            self.model(**inputs, use_cache=False, logits_to_keep=HiddenStates.EMPTY.to(self.ctx.device))
            return self.loss_of(batch, num_label_tokens, hidden_states=self.hidden.value,
                                lm_head_weight=self.hf_model.get_output_embeddings().weight)
        if self.logits_at_labels:  # logits [label tokens, vocab], labels [label tokens]: same loss, less work
            keep = batch["labels"] != -100
            logits = self.model(**inputs, use_cache=False, logits_to_keep=keep).logits
            return self.loss_of(batch, num_label_tokens, logits=logits, labels=batch["labels"][keep])
        return self.loss_of(batch, num_label_tokens, logits=self.model(**inputs, use_cache=False).logits)

    def loss_of(self, batch: dict[str, torch.Tensor], num_label_tokens: torch.Tensor, **outputs: Any) -> torch.Tensor:
        """The configured loss of one micro-batch from the model's ``outputs`` (``logits``, or
        ``hidden_states`` and ``lm_head_weight``), called with the keyword arguments it names."""
        given: dict[str, Any] = {"labels": batch["labels"], "num_label_tokens": num_label_tokens, "batch": batch,
                                 "model": self.model, "ctx": self.ctx, **outputs}
        try:
            loss = self.loss_fn(**{k: given[k] for k in self.loss_args if k in given})
        except AutomodelError:
            raise
        except Exception as e:
            raise ComponentFault(self._origin("loss"), self._doing("computing the loss"),
                                 step=self._fault_step(), exc=e) from e
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                   else f"{type(loss).__name__} {loss!r:.40}")
            raise ComponentFault(
                self._origin("loss"), self._doing("computing the loss"), step=self._fault_step(),
                problem=f"returned {got}, not a scalar tensor",
                hint="return a 0-d tensor that autograd can differentiate: the sum of token losses / num_label_tokens "
                     "(no float(), no .item(), no per-token vector)")
        return loss

    def _fault_step(self) -> int:
        """The step a fault belongs to: the one being trained (during validation: the one just trained)."""
        return self.train_state.step if not self.model.training else self.train_state.step + 1

    def _doing(self, what: str) -> str:
        return what if self.model.training else f"{what} for validation"

    def train_step(self, micro: list[dict[str, torch.Tensor]]) -> StepResult:
        """One optimizer step over ``micro`` (this rank's micro-batches of the global batch)."""
        ctx = self.ctx
        self.window_tokens += sum(b["input_ids"].numel() for b in micro)  # tokens/s of the logging window
        # Normalize by the label tokens of the whole global batch: same gradients for any split.
        label_tokens = self._all_reduce(sum((b["labels"] != -100).sum() for b in micro)) // (ctx.world_size // ctx.dp_size)
        num_label_tokens = label_tokens.clamp(min=1).to(torch.float32)
        self.window_label_tokens += label_tokens
        loss_sum = self._owned_step(micro, num_label_tokens, backward=True)
        if loss_sum is None:
            loss_sum = torch.zeros((), device=ctx.device)
            applied = self.layout.parallelizers if ctx.mesh is not None else ()  # each declares its grad_sync
            for i, batch in enumerate(micro):
                with runtime.grad_sync(self.model, i == len(micro) - 1, applied):
                    loss_sum += self.forward_backward(batch, num_label_tokens)
        max_norm = self.cfg["clip_grad_norm"] or float("inf")
        clip = member(self.step_owner, Parallelizer, "clip_grad_norm") if self.step_owner is not None else None
        norm = clip(self.params, max_norm) if clip else clip_grad_norm(self.params, max_norm)
        grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        lr = self.lr_scheduler.get_last_lr()[0]  # the lr this step used
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_state.step += 1
        # remember the first non-finite step on the device; read before saving and on logging steps
        finite = torch.isfinite(loss_sum) & torch.isfinite(grad_norm.to(loss_sum.device))
        bad_here = torch.where(finite, NO_BAD_STEP, self.train_state.step)
        torch.minimum(self.first_bad_step, bad_here, out=self.first_bad_step)
        return StepResult(loss_sum, grad_norm, label_tokens, lr)

    def _owned_step(self, micro: list[dict[str, torch.Tensor]], num_label_tokens: torch.Tensor,
                    backward: bool) -> torch.Tensor | None:
        """The loss sum of ``micro`` from the parallelizer that owns forward/backward (see
        ``contracts.Parallelizer.forward_backward``); None: there is none, or it leaves it to the loop."""
        if self.step_owner is None:
            return None
        loss = StepLoss(self, num_label_tokens, self.hidden is not None)
        return self.step_owner.forward_backward(self.model, micro, loss, self.ctx, backward=backward)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        ctx, sched, total = self.ctx, self.sched, self.ctx.total_steps
        call_hook(self.plugins, "on_train_start", at_step=self.train_state.step, ctx=ctx, model=self.model)
        batches = self.data.batches(self.train_state)  # resumes mid-epoch
        metrics: dict[str, Any] = {}
        self.window_start = time.perf_counter()
        try:
            while self.train_state.step < total:
                micro = [{k: v.to(ctx.device, non_blocking=True) for k, v in self._next_batch(batches).items()}
                         for _ in range(self.accum)]
                result = self.train_step(micro)
                for t in self.built.transforms:  # per-step work a transform owns (fp8: next step's FP8 scales)
                    if (after_step := member(t, Transform, "after_optimizer_step")) is not None:
                        after_step(self.model, ctx)
                step = self.train_state.step
                metrics = {"lr": result.lr}
                if step % sched.log_every_steps == 0 or step == total:
                    metrics.update(self.log(step, result))
                call_hook(self.plugins, "on_step_end", ctx=ctx, step=step, metrics=metrics)
                if self.val_data is not None and sched.val_every_steps and (step % sched.val_every_steps == 0 or step == total):
                    metrics.update(self.validate(step))
                if sched.ckpt_every_steps and step % sched.ckpt_every_steps == 0 and step < total:
                    self.save(step)
                if self.profiler is not None:
                    self.profiler.step(step)
                if step < total and self.stop.agreed(ctx.device, ctx.world_size > 1):
                    self._stop_for_signal(step, metrics)
            step = self.train_state.step
            if member(self.checkpointer, Checkpointer, "save_final") and self.saved_step != step:
                self.save(step)
            out = None
            if member(self.checkpointer, Checkpointer, "export_hf"):
                out = export_model(self.built, self.checkpointer, ctx, ctx.output_dir / "hf")
                ctx.print(f"exported Hugging Face model to {out}")
        except BaseException:
            self._finish(metrics, teardown=False, failing=True)
            raise
        self._finish(metrics)
        self.summary.finish(self, out)
        return metrics

    def _next_batch(self, batches: Any) -> dict[str, torch.Tensor]:
        """The next micro-batch; a dataset (or its collate) that raises is named with the step."""
        origin = self._origin("dataset")
        try:
            batch = next(batches)
        except AutomodelError as e:
            if isinstance(e, ComponentFault) or not getattr(e, "bad_record", False):
                raise
            raise ComponentFault(origin, "reading a micro-batch", step=self.train_state.step + 1, problem=str(e),
                                 hint="fix the dataset's items: input_ids and labels are lists of int of equal length") from e
        except StopIteration:
            raise
        except Exception as e:
            raise ComponentFault(origin, "reading a micro-batch", step=self.train_state.step + 1, exc=e) from e
        if not isinstance(batch, dict) or not all(isinstance(batch.get(k), torch.Tensor) for k in ("input_ids", "labels")):
            raise ComponentFault(origin, "collating a micro-batch", step=self.train_state.step + 1,
                                 problem=f"collate returned {type(batch).__name__} without input_ids and labels tensors",
                                 hint="collate(examples) returns a dict with input_ids and shifted labels (torch.long)")
        for k in ("input_ids", "labels"):
            if batch[k].dtype.is_floating_point or batch[k].dtype == torch.bool:
                raise ComponentFault(origin, "collating a micro-batch", step=self.train_state.step + 1,
                                     problem=f"collate returned {k} of dtype {batch[k].dtype}, not integer token ids",
                                     hint="token ids are integers (torch.long)")
        return batch

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        """Every logger logs ``metrics``; one that raises is disabled with a warning (the run goes on)."""
        for lg in list(self.loggers):
            try:
                lg.log(metrics, step)
            except Exception as e:
                self._disable_logger(lg, step, e)

    def _disable_logger(self, lg: Any, step: int | None, e: BaseException) -> None:
        origin = self.logger_origins.get(id(lg))
        label = origin.label if origin else type(lg).__name__
        self.loggers.remove(lg)
        when = f" at step {step}" if step is not None else ""
        self.failed_loggers.append(f"{label}{when}")
        fault = ComponentFault(origin, "logging", step=step, exc=e) if origin else None
        warn(f"{fault if fault else label}\n    the logger is disabled for the rest of the run; training goes on "
             f"(its records stop before step {step}). See docs/writing-plugins.md, 'Faults while a run is going on'.", e)

    def _checkpointer_call(self, doing: str, fn: Any, *args: Any, step: int | None = None) -> Any:
        try:
            return fn(*args)
        except AutomodelError:
            raise
        except Exception as e:
            raise ComponentFault(self._origin("checkpoint"), doing, step=step, exc=e) from e

    def log(self, step: int, result: StepResult) -> dict[str, Any]:
        """Reduce, check and log one step's metrics (the only place that reads the loss on the host)."""
        ctx = self.ctx
        replicas = ctx.world_size // ctx.dp_size
        elapsed = time.perf_counter() - self.window_start
        extra: dict[str, Any] = {}  # transforms' own metrics (compile: compile_s, recompiles)
        for t in self.built.transforms:
            if (transform_metrics := member(t, Transform, "metrics")) is not None:
                extra.update(transform_metrics())
        if "compile_s" in extra:  # compile time is reported apart, not hidden in tokens/s
            elapsed = max(elapsed - (extra["compile_s"] - self.compile_s_seen), 1e-9)
            self.compile_s_seen = extra["compile_s"]
        tokens = int(self._all_reduce(self.window_tokens.to(ctx.device))) // replicas  # padding included
        label_tokens = int(self.window_label_tokens)  # already global (train_step all-reduces it)
        self.train_state.tokens_seen += tokens
        metrics = {  # every field is defined in docs/index.md, "Logged metrics"
            "loss": float(self._all_reduce(result.loss_sum)) / replicas, "grad_norm": float(result.grad_norm),
            "lr": result.lr, "tokens_per_s": tokens / elapsed, "label_tokens_per_s": label_tokens / elapsed,
            "tokens_seen": self.train_state.tokens_seen, "label_tokens": label_tokens,
            "peak_mem_gb": runtime.peak_memory_gb(ctx.device),
        }
        metrics.update(extra)
        if self.peak_flops:
            metrics["mfu"] = 6 * self.n_params * metrics["tokens_per_s"] / (self.peak_flops * ctx.world_size)
        self.check_finite(metrics)
        self._log(metrics, step)
        self.window_tokens.zero_()
        self.window_label_tokens.zero_()
        self.window_start = time.perf_counter()
        return metrics

    def check_finite(self, metrics: dict[str, Any] | None = None) -> None:
        """Stop with :class:`Diverged` if any step so far had a non-finite loss or grad norm (all ranks agree)."""
        first = int(runtime.all_reduce(self.first_bad_step.clone(), "min"))
        if first == NO_BAD_STEP:
            return
        now = f" (step {self.train_state.step}: loss {metrics['loss']}, grad norm {metrics['grad_norm']})" if metrics else ""
        if first == 1:
            advice = ("that was before any weight update, so the learning rate is not the cause: check the data "
                      "(labels), the loss, model.dtype (float16 overflows) and the pretrained weights")
        else:
            advice = "lower optimizer.lr, keep clip_grad_norm on, or use model.dtype bfloat16/float32"
        if self.saved_step is not None:
            saved = (f"the last checkpoint (step {self.saved_step}) precedes it: resume from it after the fix "
                     "(a changed lr or schedule needs --allow-config-change)")
        else:
            saved = "no checkpoint was saved before it"
        raise Diverged(f"training diverged: the loss or grad norm was first non-finite at step {first}{now}. "
                       f"Nothing more is saved; {saved}. To fix: {advice}")

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        """Validation metrics for ``step``, logged as their own record: the dataset's own ``evaluate``,
        else the mean token loss over the validation set (all data-parallel ranks)."""
        ctx = self.ctx
        self.model.eval()
        evaluate = member(self.val_data, Dataset, "evaluate")
        if evaluate is not None:
            try:
                metrics = dict(evaluate(self.model, ctx))
            except AutomodelError:
                raise
            except Exception as e:
                raise ComponentFault(self._origin("validation_dataset"), "in evaluate(model, ctx)",
                                     step=step, exc=e) from e
        else:
            total = torch.zeros(2, device=ctx.device)  # loss sum, label tokens
            for i, batch in enumerate(self.val_loader):
                if self.sched.val_max_batches is not None and i >= self.sched.val_max_batches:
                    break
                batch = {k: v.to(ctx.device) for k, v in batch.items()}
                n = (batch["labels"] != -100).sum()
                one = torch.ones((), device=ctx.device)
                loss_sum = self._owned_step([batch], one, backward=False)
                total += torch.stack([self.forward(batch, one) if loss_sum is None else loss_sum, n.float()])
            self._all_reduce(total)
            replicas = ctx.world_size // ctx.dp_size
            loss_sum, tokens = float(total[0]) / replicas, float(total[1]) / replicas
            metrics = {"val_loss": loss_sum / max(tokens, 1.0), "val_tokens": int(tokens)}
        self.model.train()
        self.summary.validation(step, metrics, self.train_state)
        self._log(metrics, step)
        call_hook(self.plugins, "on_validation_end", ctx=self.ctx, step=step, metrics=metrics)
        return metrics

    def save(self, step: int) -> str:
        """Checkpoint ``step`` unless a step so far diverged (then :class:`Diverged`: never saved, never latest)."""
        self.check_finite()
        path = str(self._checkpointer_call("saving a checkpoint", self.checkpointer.save, self.state, step, step=step))
        self.saved_step, self.saved_path = step, path
        call_hook(self.plugins, "on_checkpoint_saved", ctx=self.ctx, step=step, path=path,
                  after=f"The checkpoint of step {step} ({path}) is complete: run again with checkpoint.resume=auto to "
                        "continue from it once the hook is fixed (or without the plugin: AUTOMODEL_LOAD_PLUGINS=<the others>).")
        return path

    def _stop_for_signal(self, step: int, metrics: dict[str, Any]) -> None:
        """SIGTERM/SIGUSR1 seen by any rank: checkpoint (unless this step just was), then exit 75 everywhere."""
        path = self.save(step) if self.saved_step != step else self.saved_path
        where = f"checkpoint {path}" if path else f"the checkpoint of step {step}"
        message = (f"received {self.stop.name}: stopped after step {step} with {where}; exiting with code "
                   f"{REQUEUE_EXIT_CODE} (requeue); run again with checkpoint.resume=auto to continue")
        if self.ctx.is_main:
            write_marker(self.ctx.output_dir, {"step": step, "signal": self.stop.name, "checkpoint": path})
        self.ctx.print(message)
        self._finish(metrics)
        raise Preempted(message, step, path)

    def _finish(self, metrics: dict[str, Any], teardown: bool = True, failing: bool = False) -> None:
        """End of a run (finished, stopped by a signal, or failed): hooks, loggers, signal handlers, and
        (unless failing, when peers may not get here) the process group. While failing, a hook that
        raises too is a warning: the error that stopped the run stays the one reported."""
        if self.finished:
            return
        self.finished = True
        step = self.train_state.step
        done = (f"Training itself finished: {step} steps" + (f", the last checkpoint is {self.saved_path}" if self.saved_path else "")
                + f"; the run directory {self.ctx.output_dir} is complete.")
        try:
            if self.profiler is not None:
                self.profiler.close()
            try:
                call_hook(self.plugins, "on_train_end", at_step=step, ctx=self.ctx, metrics=metrics,
                          after=None if failing else done)
            except ComponentFault as e:
                if not failing:
                    raise
                warn(f"{e}\n    (while the run was already stopping because of the error below)", e.__cause__)
        finally:
            for lg in list(self.loggers):
                try:
                    lg.close()
                except Exception as e:
                    self._disable_logger(lg, None, e)
            if self.failed_loggers and not failing:
                warn(f"{len(self.failed_loggers)} logger(s) failed during the run and were disabled: "
                     + "; ".join(self.failed_loggers) + " (see the warning above)")
            self.stop.uninstall()
        if teardown and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _all_reduce(self, value: torch.Tensor) -> torch.Tensor:
        return runtime.all_reduce(value)
