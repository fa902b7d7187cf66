"""The builtin plugin. It is registered exactly like an external one: through these hooks."""

from __future__ import annotations

from automodel import hookimpl

_B = "automodel.builtin"


@hookimpl
def register_model_loaders(register):
    register("hf", f"{_B}.models:hf", description="transformers AutoModelForCausalLM (path, hub id or config)")


@hookimpl
def register_model_transforms(register):
    register("activation_checkpointing", f"{_B}.transforms:ActivationCheckpointing",
             description="recompute decoder-block activations in backward (any layout)")
    register("compile", f"{_B}.transforms:Compile",
             description="torch.compile each decoder block (regional) or the whole model")


@hookimpl
def register_datasets(register):
    register("instruction", f"{_B}.datasets:instruction", description="prompt/response pairs (json, jsonl, csv, parquet, hub)")
    register("chat", f"{_B}.datasets:chat", description="messages lists via the chat template, loss on assistant turns")
    register("squad", f"{_B}.datasets:squad", description="context + question -> answer (SQuAD format)")
    register("hellaswag", f"{_B}.datasets:hellaswag", description="multiple choice; as validation: accuracy")
    register("mock", f"{_B}.datasets:mock", description="random token sequences (benchmarks, smoke tests)")


@hookimpl
def register_losses(register):
    register("masked_ce", f"{_B}.losses:MaskedCrossEntropy", description="cross-entropy over label tokens")


@hookimpl
def register_parallelizers(register):
    register("ddp", f"{_B}.parallel:DDP", description="torch DistributedDataParallel on dp_replicate")


@hookimpl
def register_optimizers(register):
    register("adamw", f"{_B}.optim:adamw", description="torch AdamW; no decay on biases, norms, embeddings")
    register("sgd", f"{_B}.optim:sgd", description="torch SGD (momentum, nesterov)")
    register("muon", f"{_B}.optim:muon", description="torch Muon for hidden matrices + AdamW for the rest, one optimizer")
    register("adafactor", f"{_B}.optim:adafactor", description="torch Adafactor (factored second moments)")
    register("adamw_8bit", f"{_B}.optim:adamw_8bit", description="bitsandbytes AdamW8bit (pip install bitsandbytes)")


@hookimpl
def register_lr_schedulers(register):
    register("constant", f"{_B}.optim:constant")
    register("cosine", f"{_B}.optim:cosine")
    register("linear", f"{_B}.optim:linear")
    register("wsd", f"{_B}.optim:wsd", description="warmup-stable-decay (linear, cosine or 1-sqrt decay)")


@hookimpl
def register_commands(cli):
    from automodel.builtin.commands import lr_curve_command, plan_command

    lr_curve_command(cli)
    plan_command(cli)


@hookimpl
def register_checkpointers(register):
    register("default", f"{_B}.checkpoint:Checkpointer", description="DCP training state + safetensors export")


@hookimpl
def register_launchers(register):
    register("local", f"{_B}.launchers:LocalLauncher", description="this machine: in-process or torchrun")


@hookimpl
def register_loggers(register):
    register("console", f"{_B}.loggers:ConsoleLogger", description="progress line on stdout")
    register("jsonl", f"{_B}.loggers:JsonlLogger", description="<output_dir>/metrics.jsonl")
