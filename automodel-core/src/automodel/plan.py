"""``automodel plan``: what one training step will need per rank, before anything runs.

This module is torch-free (the config section, the device table, the report and the advice); the
estimate itself (fake tensors, fake process group, memory tracker, FLOP counter) is in
:mod:`automodel.estimate`. See docs/plan.md.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

GiB = 2**30

#: Accelerators by name: (memory in GiB as the driver reports it, dense bf16 peak TFLOP/s).
DEVICES: dict[str, tuple[float, float]] = {
    "H200-141GB": (139.8, 989.0),
    "H100-80GB": (79.1, 989.0),
    "H100-94GB": (93.1, 989.0),
    "B200-192GB": (178.4, 2250.0),
    "A100-80GB": (79.1, 312.0),
    "A100-40GB": (39.4, 312.0),
    "L40S-48GB": (44.4, 362.0),
    "A10G-24GB": (22.0, 125.0),
    "L4-24GB": (22.0, 121.0),
}


_PASS: contextvars.ContextVar[str | None] = contextvars.ContextVar("automodel_plan_pass", default=None)


def plan_pass() -> str | None:
    """What ``automodel plan`` is simulating right now, for a component whose work repeats on fake
    tensors: ``"memory"`` (the steps under the memory tracker), ``"flops"`` (the step under the FLOP
    counter) or ``None`` (not planning: a real run). A loop over identical chunks may then stop early
    under ``"memory"`` once its memory no longer changes (two rounds and the last, differently sized
    one), and run as one chunk under ``"flops"`` (nothing is allocated for real): see docs/plan.md."""
    return _PASS.get()


@contextlib.contextmanager
def planning(what: str) -> Iterator[None]:
    """Mark the code inside as the plan's ``what`` pass (see :func:`plan_pass`)."""
    token = _PASS.set(what)
    try:
        yield
    finally:
        _PASS.reset(token)


def find_device(name: str) -> tuple[str, float, float] | None:
    """(canonical name, GiB, TFLOP/s) of a device name given loosely (``h100``, ``H100-80GB``, ``a100-40gb``)."""
    key = name.upper().replace("_", "-").replace(" ", "-")
    if key in DEVICES:
        return (key, *DEVICES[key])
    matches = [n for n in DEVICES if n.startswith(key + "-") or n == key]
    if matches:
        best = matches[0]  # the table lists each family's common size first
        return (best, *DEVICES[best])
    return None


@dataclass
class Plan:
    """The ``plan:`` section: what ``automodel plan`` assumes, and the memory check of ``automodel run``.

    Keys:
        device: the accelerator the run is meant for (``H100-80GB``, ``A100-40GB``, ... see docs/plan.md),
            for the memory check and the step time; default: the local GPU when there is one.
        memory_gb: usable memory per device in GiB (overrides the device's).
        reserve_gb: memory the plan keeps free for what a training step cannot see (CUDA context,
            cuBLAS/NCCL workspaces, allocator fragmentation). A GPU run fits when peak + reserve <= memory.
        mfu: the model FLOPs utilization the step time is stated at.
        peak_tflops: dense bf16 TFLOP/s of one device (overrides the device's).
        seq_len: tokens per row the plan assumes (default: ``dataset.max_length`` / ``dataset.seq_len``).
        model_config: a ``config.json`` used for the architecture when ``model.pretrained`` is a hub id
            (``automodel plan`` never downloads); the recipes ship theirs.
        check: ``automodel run`` refuses a config whose plan does not fit the device (exit 2). ``false`` or
            ``automodel run --no-plan-check`` launches anyway.
    """

    device: str | None = None
    memory_gb: float | None = None
    reserve_gb: float = 2.0
    mfu: float = 0.4
    peak_tflops: float | None = None
    seq_len: int | None = None
    model_config: str | None = None
    check: bool = True

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Value checks, run by ``automodel validate``."""
        out = []
        device = args.get("device")
        if isinstance(device, str) and find_device(device) is None:
            out.append(("device", f"unknown device '{device}'", f"use one of {', '.join(DEVICES)}, or set plan.memory_gb and plan.peak_tflops"))
        mfu = args.get("mfu")
        if isinstance(mfu, (int, float)) and not 0 < mfu <= 1:
            out.append(("mfu", f"must be in (0, 1], got {mfu}", "0.3-0.5 is typical for dense LLM training"))
        for key in ("memory_gb", "peak_tflops", "seq_len"):
            value = args.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                out.append((key, f"must be > 0, got {value}", ""))
        reserve = args.get("reserve_gb")
        if isinstance(reserve, (int, float)) and reserve < 0:
            out.append(("reserve_gb", f"must be >= 0, got {reserve}", ""))
        return out


#: Report rows: (key in Estimate.breakdown, label).
ROWS = (
    ("parameters", "parameters"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer state"),
    ("activations", "activations"),
    ("logits", "loss/logits"),
    ("temporaries", "temporaries"),
    ("other", "inputs, buffers, other"),
)


@dataclass
class Estimate:
    """The plan of one rank (the estimate's result; plain data, JSON-serializable with :meth:`to_json`)."""

    world_size: int
    rank: int
    layout: str
    peak_bytes: int
    breakdown: dict[str, int]
    peak_phase: str
    flops_per_step: float
    tokens_per_step: int
    micro_batch: tuple[int, int]
    grad_accum: int
    params_total: int
    params_trainable: int
    logits_bytes: int
    loss_working_bytes: int
    device: str | None = None
    memory_bytes: int | None = None
    reserve_bytes: int = 0
    peak_tflops: float | None = None
    mfu: float = 0.4
    notes: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)  # plugins' plan_memory contributions (in peak_bytes)

    @property
    def step_seconds(self) -> float | None:
        if not self.peak_tflops:
            return None
        return self.flops_per_step / (self.peak_tflops * 1e12 * self.mfu)

    @property
    def fits(self) -> bool | None:
        if self.memory_bytes is None:
            return None
        return self.peak_bytes + self.reserve_bytes <= self.memory_bytes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(step_seconds=self.step_seconds, fits=self.fits,
                   tokens_per_s=(self.tokens_per_step / self.step_seconds) if self.step_seconds else None)
        return out


def human(n: float) -> str:
    """Bytes as B/KiB/MiB/GiB with 3 significant digits."""
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if n / size < 100 else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def human_flops(f: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if f >= size:
            return f"{f / size:.3g} {unit}"
    return f"{f:.0f} FLOP"


def format_report(est: Estimate) -> str:
    """The human-readable plan (what ``automodel plan`` prints)."""
    b, s = est.micro_batch
    lines = [
        f"plan: {est.world_size} process(es), {est.layout}; rank {est.rank} shown (ranks of a dimension plan alike)",
        f"model: {est.params_total / 1e6:,.2f}M parameters, {est.params_trainable / 1e6:,.2f}M trainable",
        f"step: micro-batch {b} x {s} tokens, {est.grad_accum} accumulation -> {est.tokens_per_step:,} tokens per "
        f"optimizer step (all ranks)",
        f"peak memory per rank: {human(est.peak_bytes)} (reached in {est.peak_phase})",
    ]
    width = max(len(label) for _, label in ROWS)
    for key, label in ROWS:
        value = est.breakdown.get(key, 0)
        share = f"{100 * value / est.peak_bytes:5.1f}%" if est.peak_bytes else ""
        lines.append(f"  {label:<{width}}  {human(value):>10}  {share}")
    for name, value in est.extra.items():
        lines.append(f"  {name:<{width}}  {human(value):>10}  (declared by a plugin)")
    if est.logits_bytes:
        lines.append(f"  (logits of one micro-batch: {human(est.logits_bytes)}; the loss works with {human(est.loss_working_bytes)} "
                     "more at its peak)")
    else:
        lines.append(f"  (no logits: the loss takes hidden states; it works with {human(est.loss_working_bytes)} at its peak)")
    lines.append(f"compute: {human_flops(est.flops_per_step)} per optimizer step per rank (measured by FlopCounterMode)")
    if est.step_seconds is not None:
        tps = est.tokens_per_step / est.step_seconds
        lines.append(f"expected step time: {est.step_seconds:.3g} s at {est.mfu:.0%} MFU of {est.peak_tflops:g} TFLOP/s "
                     f"({tps:,.0f} tokens/s for the job)")
    else:
        lines.append("expected step time: unknown (name a device with --device or set plan.peak_tflops)")
    if est.memory_bytes is not None:
        need = est.peak_bytes + est.reserve_bytes
        verdict = "fits" if est.fits else "DOES NOT FIT"
        lines.append(f"device: {est.device or 'given'} with {human(est.memory_bytes)}: {verdict} "
                     f"(peak {human(est.peak_bytes)} + reserve {human(est.reserve_bytes)} = {human(need)}, "
                     f"{100 * need / est.memory_bytes:.0f}% of the device)")
    for note in est.notes:
        lines.append(f"note: {note}")
    for item in est.unsupported:
        lines.append(f"not estimated: {item}")
    return "\n".join(lines)


def advice(est: Estimate, cfg: dict[str, Any]) -> list[str]:
    """What would make a plan that does not fit fit, most effective first (from the breakdown)."""
    out: list[str] = []
    bd = est.breakdown
    transforms = {t.get("name") for t in cfg.get("transforms") or [] if isinstance(t, dict)}
    parallel = {p.get("name") for p in cfg.get("parallel") or [] if isinstance(p, dict)}
    loss = (cfg.get("loss") or {}).get("name")
    acts = bd.get("activations", 0) + bd.get("logits", 0) + bd.get("temporaries", 0)
    state = bd.get("parameters", 0) + bd.get("gradients", 0) + bd.get("optimizer", 0)
    if state > acts:
        shard = "more ranks for fsdp2 (parameters, gradients and optimizer state are split across them)"
        out.append(shard if "fsdp2" in parallel else "shard the model: parallel: [{name: fsdp2}] on more GPUs "
                   "(parameters, gradients and optimizer state are split across ranks)")
        fsdp2 = next((p for p in cfg.get("parallel") or [] if isinstance(p, dict) and p.get("name") == "fsdp2"), None)
        if fsdp2 is not None and est.grad_accum > 1 and not fsdp2.get("reduce_every_micro_batch"):
            i = cfg["parallel"].index(fsdp2)
            out.append(f"keep gradients sharded during accumulation: parallel.{i}.reduce_every_micro_batch=true (one "
                       "reduce-scatter per micro-batch instead of unsharded gradients until the last one)")
        if "lora" not in transforms:
            out.append("train a LoRA adapter instead of every weight: transforms: [{name: lora}] (no full gradients or "
                       "optimizer state)")
    if "activation_checkpointing" not in transforms and bd.get("activations", 0) > 0:
        out.append("activation checkpointing: transforms: [{name: activation_checkpointing}] (keeps one block's "
                   "activations, ~1/3 more compute)")
    b = est.micro_batch[0]
    if b > 1:
        out.append(f"a smaller micro-batch: step_scheduler.local_batch_size={max(1, b // 2)} (the global batch is kept "
                   "by gradient accumulation)")
    if loss not in ("chunked_ce", "triton_ce") and est.logits_bytes:
        out.append(f"a fused cross-entropy that never holds the logits ({human(est.logits_bytes)} per micro-batch): "
                   "loss: {name: triton_ce} (or chunked_ce on CPU)")
    if state <= acts:
        out.append("more ranks (fsdp2 shards the model state; tp also splits activations)")
    return out
