"""The estimate behind ``automodel plan``: one training step of the configured run on fake tensors.

The model is built on the meta device from its config (no weights, no GPU, no network), the
configured transforms and parallelizers are applied for the requested world size with torch's fake
process group (collectives do nothing), the parameters become fake tensors, and two optimizer steps
run through the training loop's own :meth:`automodel.train.Trainer.train_step` under
``torch.distributed._tools.mem_tracker.MemTracker`` (memory by category) and
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs). See docs/plan.md for what is and is not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from automodel import config as config_mod
from automodel.context import Context
from automodel.contracts import Loss, Parallelizer, Transform, member
from automodel.errors import AutomodelError
from automodel.mesh import Layout, build_mesh, dp_coordinates
from automodel.plan import Estimate, GiB, Plan, find_device, planning

#: The attention implementation the plan gives the model: SDPA without an explicit mask (full rows,
#: causal), as fused kernels (flash / memory-efficient) run it on a GPU. Fake tensors otherwise make
#: transformers build a [batch, 1, seq, seq] mask and SDPA fall back to the math kernel.
PLAN_ATTENTION = "automodel_plan_sdpa"


class PlanError(AutomodelError):
    """The config cannot be planned (what is missing and how to give it)."""


def plan_spec(cfg: dict[str, Any]) -> Plan:
    section = cfg.get("plan") or {}
    if isinstance(section, Plan):
        return section
    return Plan(**{k: v for k, v in section.items() if k in Plan.__dataclass_fields__})


# --------------------------------------------------------------------------------------------------
# Model on meta
# --------------------------------------------------------------------------------------------------


def _model_config(cfg: dict[str, Any], spec: Plan) -> Any:
    """The transformers config of the ``hf`` loader's model, without downloading anything."""
    from transformers import AutoConfig

    section = cfg["model"]
    pretrained = section.get("pretrained")
    trust = bool(section.get("trust_remote_code", False))
    if section.get("config"):
        spec_dict = dict(section["config"])
        return AutoConfig.for_model(spec_dict.pop("model_type"), **spec_dict)
    candidates = [spec.model_config] if spec.model_config else []
    if pretrained and Path(pretrained).expanduser().is_dir():
        candidates.append(str(Path(pretrained).expanduser() / "config.json"))
    for path in candidates:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "config.json"
        if p.is_file():
            data = json.loads(p.read_text())
            return AutoConfig.for_model(data.pop("model_type"), **data)
        raise PlanError(f"plan.model_config: {path} is not a config.json file")
    raise PlanError(f"model.pretrained: '{pretrained}' is not a local directory and `automodel plan` downloads nothing; "
                    "set plan.model_config to the model's config.json (examples/recipes/models/ has common ones), "
                    "or point model.pretrained at a local copy", ) if not trust else PlanError(
        "model: trust_remote_code models are planned only from a local directory")


def build_meta_model(cfg: dict[str, Any], plugins: Any, ctx: Context, spec: Plan) -> Any:
    """The model of ``cfg`` on the meta device: the ``hf`` loader's architecture built directly (no
    tokenizer, no weights); any other loader is called with ``ctx.meta_init`` set."""
    section = cfg["model"]
    if section.get("name") == "hf":
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        model_config = _model_config(cfg, spec)
        kwargs: dict[str, Any] = {"trust_remote_code": bool(section.get("trust_remote_code", False))}
        if section.get("attn_implementation"):
            kwargs["attn_implementation"] = section["attn_implementation"]
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(model_config, dtype=getattr(torch, section.get("dtype", "float32")), **kwargs)
        return model
    try:
        model, _ = config_mod.build_component(plugins, "model_loaders", section, ctx)
    except AutomodelError:
        raise
    except Exception as e:
        raise PlanError(f"model: the '{section.get('name')}' loader could not build the model on the meta device for the plan "
                        f"({type(e).__name__}: {e}); its memory cannot be estimated") from e
    return model


def _use_plan_attention(model: Any, notes: list[str]) -> bool:
    """Route attention through SDPA without a materialized mask (see :data:`PLAN_ATTENTION`); False: the
    model's attention keeps its own implementation (eager, flex, a custom one) and is planned as is."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # older transformers: the mask is built and dropped (a transient, counted)
        AttentionMaskInterface = None

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register(PLAN_ATTENTION, attention)
    if AttentionMaskInterface is not None:
        AttentionMaskInterface.register(PLAN_ATTENTION, lambda *args, **kwargs: None)
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
    current = {c._attn_implementation for c in configs}
    if current - {"sdpa", "flash_attention_2", "flash_attention_3", None}:
        notes.append(f"attention '{', '.join(sorted(map(str, current)))}' planned as is (it keeps its own masks)")
        return False
    for c in configs:
        c._attn_implementation = PLAN_ATTENTION
    return True


# --------------------------------------------------------------------------------------------------
# Memory tracking
# --------------------------------------------------------------------------------------------------


def _tracker_class() -> type:
    from torch.distributed._tools.mem_tracker import MemTracker

    class PhaseTracker(MemTracker):
        """MemTracker that also remembers in which phase (forward, loss, backward, optimizer step) the
        peak happened, whether the logits were alive then, and the peak inside the loss call."""

        phase = "setup"
        peak_phase = "setup"
        logits_ref: Any = None
        logits_at_peak = 0
        window_peak = 0

        def _update_peak_stats(self, peak_state: Any) -> None:  # noqa: ANN401 - torch's signature
            # Only the global peak: torch's version also walks every module's stats on every op (what
            # made planning a 1B model take minutes); the plan reads none of them.
            raised = False
            total = 0
            for dev, dev_snap in self._curr_mem_snap.items():
                now = dev_snap["Total"]
                total += now
                if self._peak_mem.get(dev, 0) < now:
                    self._peak_mem[dev] = now
                    self._peak_mem_snap[dev] = dict(dev_snap)
                    raised = True
            self.window_peak = max(self.window_peak, total)
            if raised:
                self.peak_phase = self.phase
                logits = self.logits_ref() if self.logits_ref is not None else None
                self.logits_at_peak = _storage_bytes(logits) if logits is not None else 0

        def _track_module_params_and_buffers(self, module: Any, install_grad_hooks: bool = True) -> Any:
            # torch 2.13 registers a grad hook on every parameter, which fails on a frozen one (LoRA's
            # base): mark frozen parameters as hooked already, with handles that remove nothing
            for p in module.parameters():
                if not p.requires_grad and p not in self._param_to_grad_hook_handles:
                    self._param_to_grad_hook_handles[p] = (_NoHandle(), _NoHandle())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def current_total(self) -> int:
            return sum(snap.get("Total", 0) for snap in self.get_tracker_snapshot("current").values())

    return PhaseTracker


class _NoHandle:
    def remove(self) -> None:
        pass


def _storage_bytes(t: Any) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except Exception:  # noqa: BLE001 - a subclass without one storage
        return int(t.numel() * t.element_size())


def _breakdown(snapshot: dict[Any, dict[Any, int]], logits: int) -> dict[str, int]:
    names = {"Parameter": "parameters", "Gradient": "gradients", "Optstate": "optimizer", "Activation": "activations",
             "Temp": "temporaries", "Buffer": "other", "Other": "other", "Input": "other"}
    out = {"parameters": 0, "gradients": 0, "optimizer": 0, "activations": 0, "logits": 0, "temporaries": 0, "other": 0}
    for snap in snapshot.values():
        for key, value in snap.items():
            label = getattr(key, "value", key)
            if label == "Total":
                continue
            out[names.get(label, "other")] += int(value)
    moved = min(logits, out["activations"])
    out["activations"] -= moved
    out["logits"] += moved
    return out


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------


def _seq_len(cfg: dict[str, Any], spec: Plan, model: Any) -> int:
    if spec.seq_len:
        return int(spec.seq_len)
    ds = cfg.get("dataset") or {}
    for key in ("seq_len", "max_length"):
        if isinstance(ds.get(key), int):
            return int(ds[key])
    if ds.get("name") in ("instruction", "squad", "chat"):
        return 512  # the datasets' default max_length
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    raise PlanError(f"plan.seq_len: the dataset '{ds.get('name')}' names no length; set plan.seq_len (tokens per row, "
                    f"at most {positions})" if positions else "plan.seq_len: set the tokens per row to plan for")


def _fake_process_group(world_size: int, rank: int) -> contextlib.AbstractContextManager[Any]:
    import torch.distributed as dist

    @contextlib.contextmanager
    def group() -> Any:
        if world_size <= 1:
            yield
            return
        if dist.is_initialized():
            raise PlanError("plan: a process group is already initialized in this process; plan a multi-rank layout "
                            "from a fresh process (`automodel plan --world-size N`)")
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
        try:
            yield
        finally:
            dist.destroy_process_group()

    return group()


def estimate(cfg: dict[str, Any], plugins: Any, layout: Layout | None, world_size: int = 1, rank: int = 0,
             spec: Plan | None = None) -> Estimate:
    """Plan ``cfg`` (resolved) for ``world_size`` processes: rank ``rank``'s peak memory by category,
    FLOPs per optimizer step and the expected step time (see :class:`automodel.plan.Estimate`)."""
    spec = spec or plan_spec(cfg)
    notes: list[str] = []
    unsupported: list[str] = []
    with _fake_process_group(world_size, rank), _quiet_torch():
        return _estimate(cfg, plugins, layout, world_size, rank, spec, notes, unsupported)


@contextlib.contextmanager
def _quiet_torch() -> Any:
    """Deterministic and single-threaded: the fake step computes nothing, but build-time init ops run."""
    state = torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _estimate(cfg: dict[str, Any], plugins: Any, layout: Layout | None, world_size: int, rank: int, spec: Plan,
              notes: list[str], unsupported: list[str]) -> Estimate:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from automodel.state import StepScheduler, TrainState
    from automodel.train import HiddenStates, NamedParameters, Trainer, model_inputs
    from automodel.weights import unwrap

    device = torch.device("cpu")
    mesh = None
    if world_size > 1:
        if layout is None or layout.plan is None:
            raise PlanError(f"plan: no parallel layout for {world_size} processes (config `parallel:`)")
        mesh = build_mesh(layout.plan, "cpu")
    dp_rank, dp_size = dp_coordinates(mesh, layout.plan if layout is not None else None)
    ctx = Context(rank=rank, world_size=world_size, local_rank=rank, device=device, output_dir=Path(cfg["output_dir"]),
                  config=cfg, mesh=mesh, dp_rank=dp_rank, dp_size=dp_size, plugins=plugins, meta_init=True,
                  extras={"plan": True})
    ctx.print = lambda *a, **k: None  # type: ignore[method-assign] - components' progress lines stay out of the plan

    # model: meta -> transforms -> parallelizers -> fake storage
    model = build_meta_model(cfg, plugins, ctx, spec)
    transforms = []
    for section in cfg.get("transforms") or []:
        if section.get("name") == "compile":
            notes.append("compile: planned eager (a compiled step usually needs less memory)")
            continue
        t = config_mod.build_component(plugins, "model_transforms", section)
        _unsupported(t, Transform, f"transforms: {section.get('name')}", unsupported)
        model = t.apply(model, ctx)
        transforms.append(t)
    parallelizers = layout.innermost_first if (layout is not None and mesh is not None) else []
    for p in parallelizers:
        _unsupported(p, Parallelizer, f"parallel: {type(p).__name__}", unsupported)
        if member(p, Parallelizer, "param_device") == "cpu":
            unsupported.append("CPU offload: parameters and optimizer state are counted as device memory (an overestimate)")
        model = p.apply(model, mesh, ctx)
    hf_model = unwrap(model)
    fused_attention = _use_plan_attention(hf_model, notes)

    sched = StepScheduler(**cfg["step_scheduler"])
    accum = sched.grad_accum_steps(dp_size)
    seq = _seq_len(cfg, spec, hf_model)
    batch_size = sched.local_batch_size
    vocab = int(getattr(hf_model.config, "vocab_size", 0) or getattr(getattr(hf_model.config, "text_config", None), "vocab_size", 0))
    packing = bool((cfg.get("dataset") or {}).get("packing"))

    loss_fn = config_mod.build_component(plugins, "losses", cfg["loss"])
    stand_in = member(loss_fn, Loss, "plan_stand_in")
    if stand_in is not None:
        notes.append(f"loss: planned with {type(stand_in()).__name__} (the loss's stand-in: same memory, runs on fake tensors)")
        loss_fn = stand_in()
    _unsupported(loss_fn, Loss, f"loss: {cfg['loss'].get('name')}", unsupported)
    if member(loss_fn, Loss, "setup") is not None and member(loss_fn, Loss, "plan_memory") is None:
        unsupported.append(f"loss: {cfg['loss'].get('name')} has a setup(model, ctx) the plan does not run; what it "
                           "allocates (a teacher model) is not counted")

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        buffers = {name: b for name, b in model.named_buffers() if not b.is_meta}
        model.to_empty(device=device)
        for name, value in buffers.items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = fake.from_tensor(value) if not isinstance(value, type(None)) else value
        if hasattr(hf_model, "tie_weights"):
            hf_model.tie_weights()
        model.train()
        params = NamedParameters.of(model)
        optimizer = config_mod.build_component(plugins, "optimizers", cfg["optimizer"], params)
        total = sched.max_steps or 1000
        lr_scheduler = config_mod.build_component(plugins, "lr_schedulers", cfg["lr_scheduler"], optimizer, total_steps=total)
        micro = [_batch(batch_size, seq, vocab, packing) for _ in range(min(accum, 2))]

    # the loop's own step, on a trainer shell holding only what train_step reads
    tr = Trainer.__new__(Trainer)
    tr.cfg, tr.plugins, tr.ctx, tr.sched = cfg, plugins, ctx, sched
    tr.model, tr.hf_model, tr.params, tr.optimizer, tr.lr_scheduler = model, hf_model, params, optimizer, lr_scheduler
    tr.loss_fn = loss_fn
    from automodel.contracts import LOSS_ARGUMENTS, accepted_kwargs

    tr.loss_args = accepted_kwargs(loss_fn, LOSS_ARGUMENTS)
    tr.model_inputs = model_inputs(hf_model)
    tr.hidden = HiddenStates(hf_model) if member(loss_fn, Loss, "uses_hidden_states") else None
    tr.train_state = ctx.train_state = TrainState()
    tr.built = None
    tracker = _tracker_class()()
    logits_bytes, loss_peak = _instrument(tr, tracker)
    tr.layout = layout
    tr.step_owner = next((p for p in parallelizers if member(p, Parallelizer, "forward_backward") is not None), None)
    with fake:
        tr.first_bad_step = torch.full((), torch.iinfo(torch.int64).max, dtype=torch.long, device=device)
        tr.window_tokens = torch.zeros((), dtype=torch.long)
        tr.window_label_tokens = torch.zeros((), dtype=torch.long)
        tracker.track_external(model, optimizer, *[t for b in micro for t in b.values()])
        from torch.utils.flop_counter import FlopCounterMode

        flops = FlopCounterMode(display=False)
        # FLOPs of one micro-batch (a parallelizer that owns the step, a pipeline schedule, gets them all)
        flop_micro = micro if tr.step_owner is not None else micro[:1]
        try:
            with tracker, planning("memory"):
                _create_optimizer_state(params, optimizer)  # what step 1 leaves behind, without its forward/backward
                tracker.reset_mod_stats()
                tr.train_step(micro)
            with flops, planning("flops"):  # apart: the FLOP counter's module hooks would change what the tracker sees
                tr.train_step(flop_micro)
        except AutomodelError:
            raise
        except Exception as e:
            raise PlanError(f"plan: the training step could not run on fake tensors ({type(e).__name__}: {e}); a component "
                            "needs real data (a custom kernel or a data-dependent branch): give its loss a plan_stand_in "
                            "or plan with a different component (see docs/plan.md)") from e
    peak_snap = tracker.get_tracker_snapshot("peak")
    breakdown = _breakdown(peak_snap, tracker.logits_at_peak)
    peak = int(sum(snap.get("Total", 0) for snap in peak_snap.values()))
    extra: dict[str, int] = {}
    for comp, contract, label in [*((t, Transform, "transform") for t in transforms),
                                  *((p, Parallelizer, "parallelizer") for p in parallelizers), (loss_fn, Loss, "loss")]:
        fn = member(comp, contract, "plan_memory")
        if fn is not None:
            for name, value in (fn(model, ctx) or {}).items():
                extra[f"{name} ({label})"] = int(value)
    peak += sum(extra.values())
    per_micro = flops.get_total_flops() / len(flop_micro)
    tp = layout.plan.sizes.get("tp", 1) if (layout is not None and layout.plan is not None and mesh is not None) else 1
    if tp > 1:  # FlopCounterMode counts a tensor-parallel op at its global shape: this rank does 1/tp of it
        per_micro /= tp
        notes.append(f"FLOPs: counted at global shapes and divided by the tp degree ({tp})")
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)
    if mesh is not None:  # sharded parameters count once per job
        n_total = _global_numel(model)
        n_train = _global_numel(model, trainable=True)
    if accum > 2:
        notes.append(f"{accum} micro-batches per step: 2 simulated (the peak does not grow after the second)")
    device_name, memory, peak_tflops = _device(spec)
    est = Estimate(
        world_size=world_size, rank=rank,
        layout=" x ".join(f"{d}={n}" for d, n in layout.plan.sizes.items()) if (layout and layout.plan and mesh is not None)
        else "single process",
        peak_bytes=peak, breakdown=breakdown, peak_phase=_phase_text(tracker.peak_phase, len(micro)),
        flops_per_step=per_micro * accum, tokens_per_step=batch_size * seq * accum * dp_size,
        micro_batch=(batch_size, seq), grad_accum=accum, params_total=n_total, params_trainable=n_train,
        logits_bytes=logits_bytes[0], loss_working_bytes=loss_peak[0], device=device_name,
        memory_bytes=memory, reserve_bytes=int(spec.reserve_gb * GiB) if memory is not None else 0,
        peak_tflops=peak_tflops, mfu=spec.mfu, notes=notes, unsupported=unsupported, extra=extra,
    )
    if memory is not None and device_name == "this GPU":
        notes.append("device: the local GPU's total memory")
    notes.append(f"rows of {seq} tokens, full (no padding)" + (", attention through a fused SDPA kernel without a mask"
                                                               if fused_attention else ""))
    return est


def _instrument(tr: Any, tracker: Any) -> tuple[list[int], list[int]]:
    """Phases (forward, the loss, backward, the optimizer step) and the loss's own peak, on ``tr``."""
    import weakref

    logits_bytes, loss_peak = [0], [0]
    inner_loss, forward = tr.loss_fn, tr.forward

    def tracked_loss(**kwargs: Any) -> Any:
        logits = kwargs.get("logits")
        if logits is not None:
            tracker.logits_ref = weakref.ref(logits)
            logits_bytes[0] = _storage_bytes(logits)
        tracker.phase, before = "the loss", tracker.current_total()
        tracker.window_peak = before
        out = inner_loss(**kwargs)
        loss_peak[0] = max(loss_peak[0], tracker.window_peak - before)
        tracker.phase = "backward"
        return out

    def phased_forward(batch: Any, n: Any) -> Any:
        tracker.phase = "forward"
        tracker.reset_mod_stats()  # per-module stats are per forward (the global peak is kept)
        return forward(batch, n)

    def optimizer_phase(*_: Any) -> None:
        tracker.phase = "the optimizer step"

    tr.loss_fn = tracked_loss
    tr.forward = phased_forward
    tr.optimizer.register_step_pre_hook(optimizer_phase)
    return logits_bytes, loss_peak


def _create_optimizer_state(params: Any, optimizer: Any) -> None:
    """The optimizer's state as the first step creates it: one step on zero gradients (fake tensors:
    nothing is computed), then the gradients are dropped as the loop's ``zero_grad`` does."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _phase_text(phase: str, n_micro: int) -> str:
    return phase if phase != "setup" else "setup (before the step)"


def _global_numel(model: Any, trainable: bool = False) -> int:
    n = 0
    for p in model.parameters():
        if trainable and not p.requires_grad:
            continue
        n += p.numel()  # a DTensor reports its global shape
    return n


def _batch(batch_size: int, seq: int, vocab: int, packing: bool) -> dict[str, torch.Tensor]:
    ids = torch.zeros(batch_size, seq, dtype=torch.long)  # values never matter: the tensors are fake
    batch = {"input_ids": ids, "labels": torch.zeros(batch_size, seq, dtype=torch.long)}
    if packing:
        batch["position_ids"] = torch.zeros(batch_size, seq, dtype=torch.long)
    else:
        batch["attention_mask"] = torch.ones(batch_size, seq, dtype=torch.long)
    return batch


def _unsupported(component: Any, contract: type, label: str, out: list[str]) -> None:
    reason = member(component, contract, "plan_unsupported")
    if reason:
        out.append(f"{label}: {reason}")


def _device(spec: Plan) -> tuple[str | None, int | None, float | None]:
    """(name, usable bytes, peak TFLOP/s) of the device planned for."""
    name, memory, tflops = None, None, spec.peak_tflops
    if spec.device:
        found = find_device(spec.device)
        if found is None:
            raise PlanError(f"plan.device: unknown device '{spec.device}'")
        name, gib, table_tflops = found
        memory, tflops = int(gib * GiB), tflops or table_tflops
    elif spec.memory_gb is None and torch.cuda.is_available() and not os.environ.get("AUTOMODEL_PLAN_NO_LOCAL_GPU"):
        props = torch.cuda.get_device_properties(0)
        name, memory = "this GPU", int(props.total_memory)
        from automodel.train import PEAK_BF16_TFLOPS

        tflops = tflops or next((tf for key, tf in PEAK_BF16_TFLOPS.items() if key in props.name), None)
    if spec.memory_gb is not None:
        memory = int(spec.memory_gb * GiB)
        name = name or f"{spec.memory_gb:g} GiB device"
    return name, memory, tflops


def measure(cfg: dict[str, Any], plugins: Any, layout: Layout | None = None, steps: int = 2) -> dict[str, Any]:
    """The same accounting on a real run: build the :class:`~automodel.train.Trainer` of ``cfg`` (real
    weights, real data, this process's rank of the launched job), run ``steps`` optimizer steps under the
    same tracker and return ``{"peak_bytes", "breakdown", "peak_phase"}`` for this rank. This is what the
    plan is checked against (tests/core/test_plan*.py, tests/benchmarks/bench_plan.py): the tracker counts
    the bytes of every tensor storage alive, by category, at the highest point."""
    from automodel.train import Trainer

    tr = Trainer(cfg, plugins, layout)
    tracker = _tracker_class()()
    _instrument(tr, tracker)
    batches = tr.data.batches(tr.train_state)
    micro_steps = [[{k: v.to(tr.ctx.device) for k, v in next(batches).items()} for _ in range(tr.accum)] for _ in range(steps)]
    tracker.track_external(tr.model, tr.optimizer, *[t for m in micro_steps for b in m for t in b.values()])
    with tracker:
        for i, micro in enumerate(micro_steps):
            tr.train_step(micro)
            if i < steps - 1:
                tracker.reset_mod_stats()
    snap = tracker.get_tracker_snapshot("peak")
    out = {"peak_bytes": int(sum(s.get("Total", 0) for s in snap.values())), "breakdown": _breakdown(snap, 0),
           "peak_phase": tracker.peak_phase}
    tr._finish({}, teardown=False)
    return out
