"""Every kind of component, declared once.

A :class:`Kind` says everything the core knows about one kind of component: the registration hook a
plugin implements, the config section(s) it serves (with their defaults), the noun messages use, the
arguments the loop passes to its factory before the config keys, the Protocol of the object the factory
returns (:mod:`automodel.contracts`), its ``automodel new-plugin --kind`` name, and the first-party
packages that provide components of it. The tables the rest of the core reads are derived from
:data:`KINDS`: ``registry.KINDS`` and ``registry.FIRST_PARTY``, the component sections of
``config.SECTIONS`` and ``config.SUPPLIED``, ``contracts.CONTRACTS``, the scaffold's kinds and aliases,
the CLI's ``--kind`` help and the generated docs. The loop builds every component through
:meth:`automodel.bound.Bound.build`, which takes exactly the kind's ``supplied`` arguments. Adding a kind is one :class:`Kind` here, its hookspec
in :mod:`automodel.hookspecs`, its contract and its scaffold stub; ``tests/core/test_kinds.py`` checks
that every kind has all of them.

No imports from the rest of automodel (every other core module may import this one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    """A config section a kind serves: ``loss:`` (one component) or ``loggers:`` (a list of them)."""

    key: str
    default: Any = None  # a mapping (one component) or a tuple of mappings (a list); None: none
    optional: bool = False  # may be absent without a default (validation_dataset)
    many: bool = False  # a list of components


@dataclass(frozen=True)
class Kind:
    """One kind of component (see the module docstring)."""

    name: str  # the registry's key, plural: "losses"
    hook: str  # the registration hook: "register_losses"
    noun: str  # singular, for messages: "loss"
    sections: tuple[Section, ...]  # config sections it serves
    scaffold: str  # `automodel new-plugin --kind` name: "loss"
    supplied: tuple[str, ...] = ()  # what the loop passes before the config keys ("total_steps": by keyword)
    contract: str | None = None  # the Protocol's name in automodel.contracts (None: a torch object or a tuple)
    aliases: tuple[str, ...] = ()  # other words `new-plugin --kind` accepts
    first_party: Mapping[str, str] = field(default_factory=dict)  # component name -> the package providing it

    @property
    def call(self) -> str:
        """How the core calls a factory of this kind: ``factory(ctx, tokenizer, **cfg)``."""
        lead = [s for s in self.supplied if s != "total_steps"] + (["total_steps=..."] if "total_steps" in self.supplied else [])
        return f"factory({', '.join([*lead, '**cfg'])})"

    def protocol(self) -> type | None:
        """The contract Protocol (imported on use: :mod:`automodel.contracts` imports this module)."""
        if self.contract is None:
            return None
        from automodel import contracts

        return getattr(contracts, self.contract)


KINDS: tuple[Kind, ...] = (
    Kind("model_loaders", "register_model_loaders", "model loader", (Section("model"),), "model_loader",
         supplied=("ctx",), aliases=("model_loaders", "model", "loader"),
         first_party={"hf_quantized": "automodel-qlora", "hf_vlm": "automodel-vlm"}),
    Kind("model_transforms", "register_model_transforms", "model transform", (Section("transforms", (), many=True),),
         "transform", contract="Transform", aliases=("model_transform", "model_transforms", "transforms"),
         first_party={"lora": "automodel-lora", "fp8": "automodel-fp8", "qlora": "automodel-qlora", "moe": "automodel-moe"}),
    Kind("parallelizers", "register_parallelizers", "parallelizer", (Section("parallel", (), many=True),), "parallelizer",
         contract="Parallelizer", aliases=("parallel", "parallelizers"),
         first_party={"fsdp2": "automodel-fsdp2", "fsdp2_replicate": "automodel-fsdp2", "tp": "automodel-tp", "ep": "automodel-moe", "pp": "automodel-pp"}),
    Kind("datasets", "register_datasets", "dataset", (Section("dataset"), Section("validation_dataset", optional=True)),
         "dataset", supplied=("ctx", "tokenizer"), contract="Dataset", aliases=("datasets",),
         first_party={"image_chat": "automodel-vlm"}),
    Kind("losses", "register_losses", "loss", (Section("loss", {"name": "masked_ce"}),), "loss", contract="Loss",
         aliases=("losses",), first_party={"triton_ce": "automodel-triton-ce", "chunked_ce": "automodel-triton-ce", "kd": "automodel-kd"}),
    Kind("optimizers", "register_optimizers", "optimizer", (Section("optimizer", {"name": "adamw", "lr": 1.0e-4}),),
         "optimizer", supplied=("params",), aliases=("optimizers",)),
    Kind("lr_schedulers", "register_lr_schedulers", "lr scheduler", (Section("lr_scheduler", {"name": "constant"}),),
         "lr_scheduler", supplied=("optimizer", "total_steps"), aliases=("lr_schedulers", "scheduler")),
    Kind("checkpointers", "register_checkpointers", "checkpointer", (Section("checkpoint", {"name": "default"}),),
         "checkpointer", supplied=("ctx",), contract="Checkpointer", aliases=("checkpointers", "checkpoint")),
    Kind("launchers", "register_launchers", "launcher", (Section("launcher", {"name": "local"}),), "launcher",
         contract="Launcher", aliases=("launchers",), first_party={"slurm": "automodel-slurm", "ray": "automodel-ray"}),
    Kind("loggers", "register_loggers", "logger",
         (Section("loggers", ({"name": "console"}, {"name": "jsonl"}), many=True),), "logger",
         supplied=("ctx",), contract="Logger", aliases=("loggers",), first_party={"wandb": "automodel-wandb", "tensorboard": "automodel-tensorboard", "mlflow": "automodel-mlflow"}),
)

#: Kinds by registry name ("losses") and by `new-plugin --kind` name ("loss").
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
BY_SCAFFOLD: dict[str, Kind] = {k.scaffold: k for k in KINDS}
