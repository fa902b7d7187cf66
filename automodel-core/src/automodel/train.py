"""The training loop. Read it top to bottom: setup, then one optimizer step per iteration.

    config -> process group -> mesh -> model -> transforms -> parallelizers -> materialize
    -> data -> optimizer, scheduler -> checkpointer.load -> steps (accumulate, clip, step, log,
    validate, checkpoint) -> final checkpoint + export
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from automodel import config as config_mod
from automodel.context import Context
from automodel.contracts import Parallelizer, member
from automodel.data import Collator, TrainData, validation_loader
from automodel.errors import AutomodelError
from automodel.launch import REQUEUE_EXIT_CODE
from automodel.mesh import DIM_ORDER, build_mesh, dp_coordinates, plan_mesh
from automodel.plugins import Plugins
from automodel.signals import Preempted, StopFlag, clear_marker, write_marker
from automodel.state import StepScheduler, TrainState
from automodel.weights import materialize, unwrap

# --------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise AutomodelError("device: 'cuda' was requested but no CUDA device is available; use device: auto or cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


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


def _finish(ctx: Context, plugins: Plugins, loggers: list[Any], metrics: dict[str, Any], stop: StopFlag) -> None:
    """End of a run, finished or stopped by a signal: hooks, loggers, signal handlers, process group."""
    plugins.hook.on_train_end(ctx=ctx, metrics=metrics)
    for lg in loggers:
        lg.close()
    stop.uninstall()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _stop_for_signal(stop: StopFlag, checkpointer: Any, state: dict[str, Any], step: int, ctx: Context,
                     plugins: Plugins, loggers: list[Any], metrics: dict[str, Any]) -> NoReturn:
    """SIGTERM/SIGUSR1 seen by any rank: checkpoint (unless this step just was), then exit 75 everywhere."""
    if getattr(checkpointer, "last_saved", None) != step:
        path: str | None = str(checkpointer.save(state, step))
        plugins.hook.on_checkpoint_saved(ctx=ctx, step=step, path=path)
    else:
        path = str(checkpointer.dir / f"step_{step}") if hasattr(checkpointer, "dir") else None
    message = (
        f"received {stop.name}: stopped after step {step} with checkpoint {path}; exiting with code "
        f"{REQUEUE_EXIT_CODE} (requeue); run again with checkpoint.resume=auto to continue"
    )
    if ctx.is_main:
        write_marker(ctx.output_dir, {"step": step, "signal": stop.name, "checkpoint": path})
    ctx.print(message)
    _finish(ctx, plugins, loggers, metrics, stop)
    raise Preempted(message, step, path)


def _grad_sync(model: Any, enabled: bool) -> Any:
    """Skip gradient all-reduce on all but the last micro-batch (DDP no_sync / FSDP2 flag)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if not enabled and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def _all_reduce(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(value)
    return value


def _clip_grad_norm(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"), foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux


PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    """Our console logger reports progress; silence the libraries' bars and single-process DCP warning."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def train(cfg: dict[str, Any], plugins: Plugins) -> dict[str, Any]:
    """Run one training job in this process (one rank of it). Returns the last logged metrics."""
    if not os.environ.get("AUTOMODEL_VERBOSE"):
        _quiet_libraries()
    build = config_mod.build_component
    sched = StepScheduler(**cfg["step_scheduler"])
    stop = StopFlag().install()  # SIGTERM/SIGUSR1: checkpoint at the next step boundary, exit 75

    # -- processes, devices, mesh ----------------------------------------------------------------
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(cfg["device"], local_rank)
    rank, world_size, local_rank = _init_distributed(device)
    torch.manual_seed(cfg["seed"])

    parallelizers = [build(plugins, "parallelizers", p) for p in cfg["parallel"]]
    plan = plan_mesh([(f"parallel.{i}", p.dim, p.size) for i, p in enumerate(parallelizers)], world_size)
    mesh = build_mesh(plan, device.type) if dist.is_initialized() else None
    dp_rank, dp_size = dp_coordinates(mesh, plan)
    ctx = Context(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device,
        output_dir=Path(cfg["output_dir"]), config=cfg, mesh=mesh, dp_rank=dp_rank, dp_size=dp_size,
        meta_init=mesh is not None and any(getattr(p, "meta_init", False) for p in parallelizers),
        plugins=plugins,
    )
    if ctx.is_main:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / "config.yaml").write_text(config_mod.dump(cfg))
        clear_marker(ctx.output_dir)
    _print_components(ctx, cfg, plugins, plan)

    # -- model: load, transform, parallelize (innermost first), materialize ----------------------
    model, tokenizer = build(plugins, "model_loaders", cfg["model"], ctx)
    transforms = [build(plugins, "model_transforms", t) for t in cfg["transforms"]]
    for t in transforms:
        model = t.apply(model, ctx)
    if mesh is not None:
        for p in sorted(parallelizers, key=lambda p: -DIM_ORDER.index(p.dim)):
            model = p.apply(model, mesh, ctx)
    param_device = next((d for p in parallelizers if (d := member(p, Parallelizer, "param_device"))), None)
    materialize(model, ctx, transforms, param_device)
    model.train()
    hf_model = unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    ctx.print(f"model: {n_params / 1e6:.2f}M parameters, {sum(p.numel() for p in params) / 1e6:.2f}M trainable, on {device}")

    loss_fn = build(plugins, "losses", cfg["loss"])
    hidden = HiddenStates(hf_model) if getattr(loss_fn, "uses_hidden_states", False) else None

    # -- data -------------------------------------------------------------------------------------
    collate = Collator(tokenizer.pad_token_id)
    train_data = build(plugins, "datasets", cfg["dataset"], ctx, tokenizer)
    data = TrainData(train_data, collate, sched.local_batch_size, dp_rank, dp_size, cfg["seed"])
    accum = sched.grad_accum_steps(dp_size)
    per_epoch = data.micro_batches_per_epoch()
    steps_per_epoch = per_epoch // accum if per_epoch is not None else None
    if steps_per_epoch == 0:
        raise AutomodelError(
            f"dataset: {len(train_data)} examples make no full step of {sched.global_batch_size} sequences "
            f"(global_batch_size); lower step_scheduler.global_batch_size or add data"
        )
    epochs = sched.num_epochs if sched.max_steps is None else None
    if steps_per_epoch is None and sched.max_steps is None:
        raise AutomodelError("dataset: a streaming dataset has no length; set step_scheduler.max_steps")
    total_steps = min(sched.max_steps or sys.maxsize, steps_per_epoch * epochs if epochs and steps_per_epoch else sys.maxsize)
    ctx.total_steps = total_steps
    val_loader = None
    if cfg.get("validation_dataset"):
        val_data = build(plugins, "datasets", cfg["validation_dataset"], ctx, tokenizer)
        val_loader = validation_loader(val_data, collate, sched.local_batch_size, dp_rank, dp_size)

    # -- optimizer, schedule, checkpoint, loggers ------------------------------------------------
    optimizer = build(plugins, "optimizers", cfg["optimizer"], params)
    lr_scheduler = build(plugins, "lr_schedulers", cfg["lr_scheduler"], optimizer, total_steps=total_steps)
    checkpointer = build(plugins, "checkpointers", cfg["checkpoint"], ctx)
    train_state = ctx.train_state = TrainState()
    state = {"model": model, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "train_state": train_state}
    resumed = checkpointer.load(state)
    if resumed is not None:
        ctx.print(f"resumed from step {resumed}")
        if resumed >= total_steps:
            ctx.print(f"warning: the checkpoint is at step {resumed} and the run ends at step {total_steps}: nothing "
                      "to train; raise step_scheduler.max_steps to continue, or use checkpoint.resume=never")
    loggers = [build(plugins, "loggers", spec, ctx) for spec in cfg["loggers"]] if ctx.is_main else []
    if world_size > 1:  # what loggers stored in train_state.metadata (a run id) is saved by every rank
        box = [train_state.metadata]
        dist.broadcast_object_list(box, src=0)
        train_state.metadata = box[0]
    ctx.print(
        f"training {total_steps} step{'s' if total_steps != 1 else ''}: {sched.global_batch_size} sequences/step = {sched.local_batch_size} x "
        f"{accum} accumulation x {dp_size} data-parallel; {len(train_data)} examples, {steps_per_epoch} steps/epoch"
    )
    plugins.hook.on_train_start(ctx=ctx, model=model)

    def forward(batch: dict[str, torch.Tensor], num_label_tokens: torch.Tensor) -> torch.Tensor:
        labels = batch.pop("labels")
        if hidden is not None:
            model(**batch, use_cache=False, logits_to_keep=HiddenStates.EMPTY.to(device))
            return loss_fn(
                labels=labels, num_label_tokens=num_label_tokens,
                hidden_states=hidden.value, lm_head_weight=hf_model.get_output_embeddings().weight,
            )
        logits = model(**batch, use_cache=False).logits
        return loss_fn(labels=labels, num_label_tokens=num_label_tokens, logits=logits)

    # -- steps ------------------------------------------------------------------------------------
    batches = data.batches(train_state)  # resumes mid-epoch
    metrics: dict[str, Any] = {}
    window_tokens, window_start = torch.zeros((), dtype=torch.long), time.perf_counter()
    peak_flops = _peak_flops(device)
    while train_state.step < total_steps:
        micro = [{k: v.to(device, non_blocking=True) for k, v in next(batches).items()} for _ in range(accum)]
        # Normalize by the label tokens of the whole global batch: same gradients for any split.
        label_tokens = _all_reduce(sum((b["labels"] != -100).sum() for b in micro), ctx) // (world_size // dp_size)
        num_label_tokens = label_tokens.clamp(min=1).to(torch.float32)
        loss_sum = torch.zeros((), device=device)
        for i, batch in enumerate(micro):
            window_tokens += batch["input_ids"].numel()
            with _grad_sync(model, i == accum - 1):
                loss = forward(batch, num_label_tokens)
                (loss * dp_size).backward()  # DDP / FSDP average over dp ranks; undo that
            loss_sum += loss.detach()
        grad_norm = _clip_grad_norm(params, cfg["clip_grad_norm"])
        optimizer.step()
        lr = lr_scheduler.get_last_lr()[0]  # the lr this step used
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_state.step += 1
        step = train_state.step
        metrics = {"lr": lr}

        if step % sched.log_every_steps == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            tokens = int(_all_reduce(window_tokens.to(device), ctx)) // (world_size // dp_size)
            tokens_per_s = tokens / elapsed
            metrics.update(
                loss=float(_all_reduce(loss_sum, ctx)) / (world_size // dp_size),
                grad_norm=float(grad_norm), tokens_per_s=tokens_per_s, peak_mem_gb=_peak_memory_gb(device),
                label_tokens=int(label_tokens),
            )
            if peak_flops:
                metrics["mfu"] = 6 * n_params * tokens_per_s / (peak_flops * world_size)
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):  # same on every rank: all stop
                raise AutomodelError(
                    f"training diverged at step {step}: loss {metrics['loss']}, grad norm {metrics['grad_norm']}; "
                    f"nothing more is saved (checkpoints so far: {getattr(checkpointer, 'dir', 'none')}). "
                    "Lower optimizer.lr, keep clip_grad_norm on, or use model.dtype bfloat16/float32"
                )
            train_state.tokens_seen += tokens
            for lg in loggers:
                lg.log(metrics, step)
            window_tokens.zero_()
            window_start = time.perf_counter()
        plugins.hook.on_step_end(ctx=ctx, step=step, metrics=metrics)

        if val_loader is not None and sched.val_every_steps and (step % sched.val_every_steps == 0 or step == total_steps):
            val = evaluate(model, forward, val_loader, sched.val_max_batches, ctx)
            for lg in loggers:
                lg.log(val, step)
            plugins.hook.on_validation_end(ctx=ctx, step=step, metrics=val)
            metrics.update(val)

        if sched.ckpt_every_steps and step % sched.ckpt_every_steps == 0 and step < total_steps:
            path = checkpointer.save(state, step)
            plugins.hook.on_checkpoint_saved(ctx=ctx, step=step, path=str(path))
        if step < total_steps and stop.agreed(device, world_size > 1):
            _stop_for_signal(stop, checkpointer, state, step, ctx, plugins, loggers, metrics)

    # -- the end: final checkpoint, export --------------------------------------------------------
    if getattr(checkpointer, "save_final", False) and getattr(checkpointer, "last_saved", resumed) != train_state.step:
        path = checkpointer.save(state, train_state.step)
        plugins.hook.on_checkpoint_saved(ctx=ctx, step=train_state.step, path=str(path))
    if getattr(checkpointer, "export_hf", True):
        export(model, tokenizer, transforms, checkpointer, ctx)
    _finish(ctx, plugins, loggers, metrics, stop)
    return metrics


@torch.no_grad()
def evaluate(model: Any, forward: Any, loader: Any, max_batches: int | None, ctx: Context) -> dict[str, Any]:
    """Mean token loss over the validation set (all data-parallel ranks)."""
    model.eval()
    total = torch.zeros(2, device=ctx.device)  # loss sum, label tokens
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        n = (batch["labels"] != -100).sum()
        total += torch.stack([forward(batch, torch.ones((), device=ctx.device)), n.float()])
    model.train()
    _all_reduce(total, ctx)
    replicas = ctx.world_size // ctx.dp_size
    loss_sum, tokens = float(total[0]) / replicas, float(total[1]) / replicas
    return {"val_loss": loss_sum / max(tokens, 1.0), "val_tokens": int(tokens)}


def export(model: Any, tokenizer: Any, transforms: list[Any], checkpointer: Any, ctx: Context) -> None:
    """Write ``<output_dir>/hf``: a transform that knows better (LoRA adapters) exports itself."""
    out = ctx.output_dir / "hf"
    exporters = [t for t in transforms if hasattr(t, "export")]
    if exporters:
        for t in exporters:
            t.export(model, tokenizer, out, ctx)
    else:
        checkpointer.export(model, tokenizer, out)
    ctx.print(f"exported Hugging Face model to {out}")


def _print_components(ctx: Context, cfg: dict[str, Any], plugins: Plugins, plan: Any) -> None:
    """Log which plugin (name, version) provided each component the run uses."""
    if not ctx.is_main:
        return
    from automodel.config import SECTIONS, Component, ComponentList
    rows = []
    for key, spec in SECTIONS.items():
        if not isinstance(spec, (Component, ComponentList)) or not cfg.get(key):
            continue
        items = cfg[key] if isinstance(spec, ComponentList) else [cfg[key]]
        for item in items:
            if "_target_" in item:
                rows.append(f"{key}={item['_target_']} (_target_)")
            else:
                rows.append(f"{key}={item['name']} ({plugins.provider_of(spec.kind, item['name'])})")
    mesh = " x ".join(f"{d}={s}" for d, s in plan.sizes.items()) or "single process"
    print(f"automodel: {ctx.world_size} process(es), mesh {mesh}", flush=True)
    print("components: " + ", ".join(rows), flush=True)
