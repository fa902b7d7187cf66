"""One short example per hook, shown under each hook in docs/hooks.md (``python docs/gen_hooks.py``).

This module is a complete, working plugin: tests/core/test_hook_examples.py loads it with ``--plugin``
semantics and runs the conformance kit on every component it registers, so the examples cannot rot.
Each example is one ``@hookimpl`` function; the classes it registers are defined right above it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click
from automodel import hookimpl

# --- register_model_loaders -----------------------------------------------------------------------


def tiny_random_llama(ctx: Any, tokenizer: str, hidden_size: int = 64, num_hidden_layers: int = 2) -> Any:
    """A freshly initialised Llama sized by the config, on the tokenizer of a local directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=4)
    return LlamaForCausalLM(config), tok


tiny_random_llama.path_args = ("tokenizer",)  # the saved config holds it as an absolute path
# the architecture before launch, for parallelizers' validate_model checks (tp: heads divisible by its size)
tiny_random_llama.model_config = lambda args: {"hidden_size": args.get("hidden_size", 64), "num_attention_heads": 4,
                                               "num_key_value_heads": 4, "num_hidden_layers": args.get("num_hidden_layers", 2)}


@hookimpl
def register_model_loaders(register):
    register("tiny_random_llama", tiny_random_llama, description="random Llama on a local tokenizer")


# --- register_model_transforms --------------------------------------------------------------------


class FreezeEmbeddings:
    """Train everything but the input embeddings."""

    def apply(self, model: Any, ctx: Any) -> Any:
        model.get_input_embeddings().weight.requires_grad_(False)
        return model


class MaxNormEmbeddings:
    """Max-norm regularization: after every optimizer step, input-embedding rows longer than ``max_norm``
    are scaled back to it (for an unsharded embedding)."""

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm
        self.rescaled = 0  # rows rescaled so far; state lives on the transform, not in ctx

    def apply(self, model: Any, ctx: Any) -> Any:
        return model

    def after_optimizer_step(self, model: Any, ctx: Any) -> None:
        import torch

        weight = model.get_input_embeddings().weight
        with torch.no_grad():
            norms = weight.norm(dim=1, keepdim=True)
            self.rescaled += int((norms > self.max_norm * 1.0001).sum())  # rows at max_norm stay (rounding)
            weight.mul_((self.max_norm / norms).clamp(max=1.0))

    def metrics(self) -> dict[str, Any]:
        return {"max_norm_rescaled": self.rescaled}


@hookimpl
def register_model_transforms(register):
    register("freeze_embeddings", FreezeEmbeddings)
    register("max_norm_embeddings", MaxNormEmbeddings)


# --- register_parallelizers -----------------------------------------------------------------------


class Replicate:
    """Plain data parallel: the whole model on every rank of the ``dp_replicate`` mesh dimension."""

    dim = "dp_replicate"
    exclusive = "it wraps the whole model in DistributedDataParallel"

    def __init__(self, size: int | None = None):
        self.size = size

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return model
        return DistributedDataParallel(model, process_group=mesh["dp_replicate"].get_group())

    @staticmethod
    def grad_sync(model: Any, enabled: bool) -> Any:
        """All-reduce gradients on the last micro-batch of a step only."""
        return None if enabled or not hasattr(model, "no_sync") else model.no_sync()


@hookimpl
def register_parallelizers(register):
    register("replicate", Replicate)


# --- register_datasets ----------------------------------------------------------------------------


class JsonlText:
    """Each line of a JSONL file is ``{"text": ...}``; the whole text carries the loss."""

    def __init__(self, tokenizer: Any, path: str, max_length: int = 128):
        self.rows = []
        for line in Path(path).read_text().splitlines():
            if line.strip():
                ids = tokenizer(json.loads(line)["text"])["input_ids"][:max_length]
                self.rows.append({"input_ids": ids, "labels": list(ids)})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


def jsonl_text(ctx: Any, tokenizer: Any, path: str = "data.jsonl", max_length: int = 128) -> JsonlText:
    return JsonlText(tokenizer, path, max_length)


jsonl_text.path_args = ("path",)


@hookimpl
def register_datasets(register):
    register("jsonl_text", jsonl_text)


# --- register_losses ------------------------------------------------------------------------------


class SmoothedCE:
    """Cross-entropy with label smoothing: sum over label tokens / label tokens of the global batch."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing

    def __call__(self, *, logits: Any, labels: Any, num_label_tokens: Any) -> Any:
        import torch.nn.functional as F

        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                               label_smoothing=self.smoothing, reduction="sum")
        return loss / num_label_tokens


def validate_smoothing(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    if not 0.0 <= args.get("smoothing", 0.1) < 1.0:
        return [("smoothing", f"must be in [0, 1), got {args['smoothing']}", "try 0.1")]
    return []


SmoothedCE.validate_args = staticmethod(validate_smoothing)


@hookimpl
def register_losses(register):
    register("smoothed_ce", SmoothedCE)


# --- register_optimizers --------------------------------------------------------------------------


def sgd_nesterov(params: Any, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0) -> Any:
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


@hookimpl
def register_optimizers(register):
    register("sgd_nesterov", sgd_nesterov)


# --- register_lr_schedulers -----------------------------------------------------------------------


def step_decay(optimizer: Any, total_steps: int, every: int = 100, gamma: float = 0.5) -> Any:
    import torch

    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=gamma)


@hookimpl
def register_lr_schedulers(register):
    register("step_decay", step_decay)


# --- register_checkpointers -----------------------------------------------------------------------


def keep_two(ctx: Any, dir: str | None = None, resume: str = "auto") -> Any:
    """The builtin checkpointer (atomic DCP checkpoints), keeping only the two newest."""
    from automodel.builtin.checkpoint import Checkpointer

    return Checkpointer(ctx, dir=dir, keep_last=2, resume=resume)


@hookimpl
def register_checkpointers(register):
    register("keep_two", keep_two)


# --- register_launchers ---------------------------------------------------------------------------


class Niced:
    """Run the job's command in this process group, at a lower CPU priority (``nice``)."""

    world_size = 1

    def __init__(self, niceness: int = 10):
        self.niceness = niceness

    def launch(self, job: Any) -> int:
        import subprocess
        import sys

        cmd = ["nice", "-n", str(self.niceness), sys.executable, *job.worker_command()]
        return subprocess.call(cmd, env=job.worker_env())


@hookimpl
def register_launchers(register):
    register("niced", Niced)


# --- register_loggers -----------------------------------------------------------------------------


class CsvLogger:
    """One row per record in ``<output_dir>/metrics.csv`` (columns from the first record)."""

    def __init__(self, ctx: Any, filename: str = "metrics.csv"):
        self.path = Path(ctx.output_dir) / filename
        self.file = self.path.open("a", newline="")
        self.writer: Any = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, ["step", *metrics], extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({"step": step, **metrics})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@hookimpl
def register_loggers(register):
    register("csv", CsvLogger)


# --- register_commands ----------------------------------------------------------------------------


@hookimpl
def register_commands(cli):
    @cli.command("last-loss")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    def last_loss(run_dir: str) -> None:
        """Print the last logged training loss of RUN_DIR."""
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        click.echo(next(r["loss"] for r in reversed(records) if "loss" in r))


# --- lifecycle hooks ------------------------------------------------------------------------------


@hookimpl
def on_train_start(ctx, model):
    if ctx.is_main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"[example] training {trainable:,} parameters on {ctx.world_size} process(es)")


@hookimpl
def on_step_end(ctx, step, metrics):
    if ctx.is_main and "loss" in metrics and metrics["loss"] > 20:
        print(f"[example] step {step}: loss {metrics['loss']:.2f} looks diverged")


@hookimpl
def on_validation_end(ctx, step, metrics):
    if ctx.is_main and "val_loss" in metrics:
        (Path(ctx.output_dir) / "best_val_loss.txt").write_text(f"{step} {metrics['val_loss']}\n")


@hookimpl
def on_checkpoint_saved(ctx, step, path):
    if ctx.is_main:
        print(f"[example] checkpoint for step {step} at {path}")


@hookimpl
def on_train_end(ctx, metrics):
    if ctx.is_main:
        (Path(ctx.output_dir) / "DONE").write_text(json.dumps(metrics, default=str))
