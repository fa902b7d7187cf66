"""Optimizers, parameter groups and learning-rate schedules (torch imported when they are built, not at import).

Every optimizer here groups the trainable parameters the way the Hugging Face Trainer and torchtune do:
no weight decay on biases and norm weights (every parameter with fewer than 2 dimensions), none on the
embeddings unless ``decay_embeddings``, extra ``no_decay`` name patterns, and per-group learning-rate
multipliers by name pattern (``lr_multipliers: {lora_B: 2.0}``). The core passes the parameters as a
:class:`automodel.train.NamedParameters` list (plain tensors with a ``names`` attribute); a plain list of
tensors (an older caller) is grouped by shape only. The groups are printed once, on rank 0.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

#: Parameter names of input embeddings (HF Llama/Qwen/Mistral ``embed_tokens``, GPT-2 ``wte``/``wpe``, ...).
EMBEDDING_PATTERN = r"(^|\.)(embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings|tok_embeddings)\."
#: Parameter names of the output head (never given to Muon: it is not a hidden matrix).
HEAD_PATTERN = r"(^|\.)(lm_head|embed_out|output)\."


# -- parameter groups -------------------------------------------------------------------------------


@dataclass
class Group:
    """One optimizer parameter group as built by :func:`param_groups`."""

    label: str
    weight_decay: float
    lr_multiplier: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def as_dict(self, lr: float) -> dict[str, Any]:
        return {"params": self.params, "lr": lr * self.lr_multiplier, "weight_decay": self.weight_decay,
                "lr_multiplier": self.lr_multiplier, "group": self.label, **self.extra}


def named(params: Iterable[Any]) -> list[tuple[str, Any]]:
    """``(name, parameter)`` pairs from what the core passes: a :class:`~automodel.train.NamedParameters`
    list, (name, tensor) pairs, or plain tensors (named ``param_<i>``: grouped by shape only)."""
    params = params if isinstance(params, list) else list(params)
    names = getattr(params, "names", None)
    if names is not None:
        return list(zip(names, params))
    if params and isinstance(params[0], tuple):
        return [(str(n), p) for n, p in params]
    return [(f"param_{i}", p) for i, p in enumerate(params)]


def _compile(patterns: Iterable[str], key: str) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


def param_groups(
    params: Iterable[Any],
    weight_decay: float,
    decay_embeddings: bool = False,
    no_decay: Iterable[str] = (),
    lr_multipliers: dict[str, float] | None = None,
    split: Callable[[str, Any], tuple[str, dict[str, Any]] | None] | None = None,
) -> list[Group]:
    """Split the trainable parameters into groups: ``decay`` / ``no_decay`` (1-D parameters: biases and norm
    weights; embeddings unless ``decay_embeddings``; names matching a ``no_decay`` pattern), times the first
    ``lr_multipliers`` pattern (``re.search`` on the name) that matches, times what ``split`` says (Muon:
    which sub-optimizer). Empty groups are dropped; frozen parameters never appear."""
    no_decay_res = _compile(no_decay, "no_decay")
    multipliers = [(re.compile(p), float(m)) for p, m in (lr_multipliers or {}).items()]
    embedding = re.compile(EMBEDDING_PATTERN)
    groups: dict[tuple[Any, ...], Group] = {}
    for name, p in named(params):
        if not getattr(p, "requires_grad", True):
            continue
        decays = weight_decay > 0 and p.ndim >= 2 and not any(r.search(name) for r in no_decay_res)
        if decays and not decay_embeddings and embedding.search(name):
            decays = False
        mult_pattern, mult = next(((r.pattern, m) for r, m in multipliers if r.search(name)), (None, 1.0))
        sub, extra = split(name, p) if split else ("", {})
        label = "+".join(x for x in (sub, "decay" if decays else "no_decay", f"lr x{mult:g} ({mult_pattern})" if mult_pattern else "") if x)
        key = (sub, decays, mult_pattern)
        if key not in groups:
            groups[key] = Group(label, weight_decay if decays else 0.0, mult, dict(extra))
        groups[key].names.append(name)
        groups[key].params.append(p)
    return list(groups.values())


def _short(names: list[str], limit: int = 4) -> str:
    """A few representative names: layer indices folded (``layers.*.mlp.up_proj.weight``)."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
    more = f", ... (+{len(folded) - limit})" if len(folded) > limit else ""
    return ", ".join(folded[:limit]) + more


def describe_groups(optimizer_name: str, groups: list[Group], lr: float) -> str:
    """What :func:`print_groups` prints: one line per group (tensors, parameters, lr, weight decay, names)."""
    total = sum(p.numel() for g in groups for p in g.params)
    lines = [f"optimizer {optimizer_name}: {len(groups)} parameter group{'s' if len(groups) != 1 else ''}, "
             f"{sum(len(g.params) for g in groups)} tensors, {total / 1e6:.3f}M trainable parameters"]
    for i, g in enumerate(groups):
        n = sum(p.numel() for p in g.params)
        lines.append(f"  [{i}] {g.label:<22} {len(g.params):>4} tensors {n / 1e6:>9.3f}M  lr {lr * g.lr_multiplier:.3g}  "
                     f"weight_decay {g.weight_decay:g}  {_short(g.names)}")
    return "\n".join(lines)


def print_groups(optimizer_name: str, groups: list[Group], lr: float) -> None:
    """Print :func:`describe_groups` on rank 0 (every process when not distributed)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(describe_groups(optimizer_name, groups, lr), flush=True)


def _grouped(name: str, params: Any, lr: float, weight_decay: float, decay_embeddings: bool, no_decay: list[str],
             lr_multipliers: dict[str, float], split: Any = None) -> list[dict[str, Any]]:
    groups = param_groups(params, weight_decay, decay_embeddings, no_decay, lr_multipliers, split)
    if not groups:
        from automodel.errors import AutomodelError

        raise AutomodelError(f"optimizer {name}: the model has no trainable parameters (every requires_grad is False); "
                             "check the transforms (LoRA target_modules) or the model's frozen layers")
    print_groups(name, groups, lr)
    return [g.as_dict(lr) for g in groups]


# -- optimizers -------------------------------------------------------------------------------------


def adamw(
    params: Any,
    lr: float = 1.0e-4,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1.0e-8,
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
    no_decay: list[str] = (),
    lr_multipliers: dict[str, float] | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> Any:
    """``torch.optim.AdamW`` over parameter groups: no weight decay on biases, norm weights (1-D) and the
    embeddings (unless ``decay_embeddings``) or names matching a ``no_decay`` regex; ``lr_multipliers``:
    ``{regex: factor}`` scales the lr of matching parameters (first match wins)."""
    import torch

    groups = _grouped("adamw", params, lr, weight_decay, decay_embeddings, list(no_decay), lr_multipliers or {})
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused)


def sgd(
    params: Any, lr: float = 1.0e-2, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
    decay_embeddings: bool = False, no_decay: list[str] = (), lr_multipliers: dict[str, float] | None = None,
) -> Any:
    """``torch.optim.SGD`` over the same parameter groups as ``adamw``."""
    import torch

    groups = _grouped("sgd", params, lr, weight_decay, decay_embeddings, list(no_decay), lr_multipliers or {})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def adafactor(
    params: Any,
    lr: float = 1.0e-2,
    beta2_decay: float = -0.8,
    eps: list[float | None] = (None, 1.0e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
    no_decay: list[str] = (),
    lr_multipliers: dict[str, float] | None = None,
    foreach: bool | None = None,
) -> Any:
    """``torch.optim.Adafactor`` (factored second moments: row and column statistics instead of a full
    matrix, no first moment). ``lr`` is a relative step size (torch's default 1e-2), scaled by each
    parameter's RMS."""
    import torch

    groups = _grouped("adafactor", params, lr, weight_decay, decay_embeddings, list(no_decay), lr_multipliers or {})
    return full_tensor_step(torch.optim.Adafactor)(groups, lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                                 weight_decay=weight_decay, foreach=foreach)


BNB_MISSING = ("the optimizer adamw_8bit needs bitsandbytes, which is not installed: pip install bitsandbytes "
               "(>= 0.45; runs on CPU and CUDA). Or use optimizer.name=adamw / adafactor")


def import_bitsandbytes() -> Any:
    """``import bitsandbytes`` without its CPU 4-bit kernel warning (optimizers do not use those kernels)."""
    import logging

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        log.setLevel(level)
    return bitsandbytes


def adamw_8bit(
    params: Any,
    lr: float = 1.0e-4,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1.0e-8,
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
    no_decay: list[str] = (),
    lr_multipliers: dict[str, float] | None = None,
    min_8bit_size: int = 4096,
) -> Any:
    """bitsandbytes ``AdamW8bit``: both Adam moments in block-wise quantized 8 bits (about a quarter of
    AdamW's state memory); tensors with fewer than ``min_8bit_size`` elements keep 32-bit state."""
    if importlib.util.find_spec("bitsandbytes") is None:
        from automodel.errors import AutomodelError

        raise AutomodelError(BNB_MISSING)
    bnb = import_bitsandbytes()

    groups = _grouped("adamw_8bit", params, lr, weight_decay, decay_embeddings, list(no_decay), lr_multipliers or {})
    return full_tensor_step(bnb.optim.AdamW8bit)(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, min_8bit_size=min_8bit_size)


_FULL_TENSOR_CLASSES: dict[type, type] = {}


def full_tensor_step(base: type) -> type:
    """``base`` (an optimizer class whose update needs whole tensors or custom kernels: Adafactor's row and
    column statistics, bitsandbytes' 8-bit kernels) made to work with DTensor (fsdp2, tp) parameters: each
    sharded parameter is gathered with its gradient, stepped as a plain tensor exactly as in one process,
    and its shard copied back. Its state is then plain, replicated tensors (identical on every rank, which
    DCP saves once): small for Adafactor (factored), the full 8-bit moments for ``adamw_8bit``. Plain
    parameters take the optimizer's own path unchanged."""
    if base in _FULL_TENSOR_CLASSES:
        return _FULL_TENSOR_CLASSES[base]
    import torch

    def step(self: Any, closure: Any = None) -> Any:
        from torch.distributed.tensor import DTensor, distribute_tensor

        swaps = []
        with torch.no_grad():
            for group in self.param_groups:
                for i, p in enumerate(group["params"]):
                    if isinstance(p, DTensor) and p.grad is not None:
                        full = p.full_tensor()
                        full.grad = p.grad.full_tensor()
                        self.state[full] = self.state.pop(p, {})
                        group["params"][i] = full
                        swaps.append((group, i, p, full))
        try:
            return base.step(self, closure)
        finally:
            with torch.no_grad():
                for group, i, p, full in swaps:
                    group["params"][i] = p
                    self.state[p] = self.state.pop(full, {})
                    shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
                    p.to_local().copy_(shard.to_local())
                    full.grad = None

    cls = type(base.__name__, (base,), {"step": step, "__module__": __name__, "__doc__": base.__doc__})
    _FULL_TENSOR_CLASSES[base] = cls
    return cls


def _is_muon_matrix(name: str, p: Any) -> bool:
    return p.ndim == 2 and not re.search(EMBEDDING_PATTERN, name) and not re.search(HEAD_PATTERN, name)


def muon(
    params: Any,
    lr: float = 1.0e-4,
    weight_decay: float = 0.0,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adjust_lr_fn: Literal["match_rms_adamw", "original"] = "match_rms_adamw",
    adamw_lr: float | None = None,
    adamw_betas: list[float] = (0.9, 0.999),
    adamw_eps: float = 1.0e-8,
    decay_embeddings: bool = False,
    no_decay: list[str] = (),
    lr_multipliers: dict[str, float] | None = None,
) -> Any:
    """``torch.optim.Muon`` (orthogonalized momentum, Newton-Schulz) for the 2-D hidden matrices and AdamW for
    the embeddings, the output head, norms and biases, in one optimizer (one state dict: the checkpointer
    saves and resumes it like any other). With ``adjust_lr_fn: match_rms_adamw`` (the default) Muon's update
    has AdamW's RMS, so one ``lr`` serves both; ``adamw_lr`` gives the AdamW part its own."""
    def split(name: str, p: Any) -> tuple[str, dict[str, Any]]:
        if _is_muon_matrix(name, p):
            return "muon", {"use_muon": True, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
                            "adjust_lr_fn": adjust_lr_fn, "eps": 1.0e-7}
        return "adamw", {"use_muon": False, "betas": tuple(adamw_betas), "eps": adamw_eps}

    groups = _grouped("muon", params, lr, weight_decay, decay_embeddings, list(no_decay), lr_multipliers or {}, split)
    if adamw_lr is not None:
        for g in groups:
            if not g["use_muon"]:
                g["lr"] = adamw_lr * g["lr_multiplier"]
    return muon_adamw_class()(groups)


_MUON_ADAMW: type | None = None


def muon_adamw_class() -> type:
    """The :class:`MuonAdamW` optimizer class (defined on first use: importing this module imports no torch)."""
    global _MUON_ADAMW
    if _MUON_ADAMW is not None:
        return _MUON_ADAMW
    import torch

    class MuonAdamW(torch.optim.Optimizer):
        """One optimizer over two kinds of groups: ``use_muon`` groups step with ``torch.optim.Muon``, the
        others with ``torch.optim.AdamW``. Both inner optimizers share this object's ``param_groups`` (the
        same dicts: schedulers set their lr here) and ``state`` (so ``state_dict``/``load_state_dict``, and
        DCP's ``get/set_optimizer_state_dict``, see one ordinary optimizer)."""

        def __init__(self, groups: list[dict[str, Any]]):
            muon_groups = [g for g in groups if g["use_muon"]]
            adam_groups = [g for g in groups if not g["use_muon"]]
            # the inner optimizers fill each group's defaults; this object then owns the same dicts
            self._muon = torch.optim.Muon(muon_groups, lr=groups[0]["lr"]) if muon_groups else None
            self._adamw = torch.optim.AdamW(adam_groups, lr=groups[0]["lr"]) if adam_groups else None
            super().__init__(groups, defaults={})  # the same dicts, in the given order
            self._link()

        def _link(self) -> None:
            for inner, flag in ((self._muon, True), (self._adamw, False)):
                if inner is not None:
                    inner.param_groups = [g for g in self.param_groups if g["use_muon"] is flag]
                    inner.state = self.state

        def add_param_group(self, param_group: dict[str, Any]) -> None:
            if "use_muon" not in param_group:
                raise ValueError("MuonAdamW: a new parameter group needs use_muon: True/False")
            super().add_param_group(param_group)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)  # replaces param_groups and state: point the inner ones at them
            self._link()

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for inner in (self._muon, self._adamw):
                if inner is not None:
                    inner.step()
            return loss

    MuonAdamW.__module__ = __name__
    _MUON_ADAMW = MuonAdamW
    return MuonAdamW


# -- learning-rate schedules ------------------------------------------------------------------------


def _lambda(optimizer: Any, fn: Any) -> Any:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def floor_ratio(optimizer: Any, min_lr: float | None, min_lr_ratio: float) -> float:
    """The final lr as a fraction of the optimizer's lr: ``min_lr`` (absolute; a group with an lr multiplier
    ends at ``min_lr`` x its multiplier) or ``min_lr_ratio``."""
    if min_lr is None:
        return min_lr_ratio
    group = optimizer.param_groups[0]
    base = group.get("initial_lr", group["lr"]) / group.get("lr_multiplier", 1.0)
    return min(1.0, min_lr / base) if base > 0 else 0.0


def _warmup(step: int, warmup_steps: int) -> float | None:
    return (step + 1) / warmup_steps if step < warmup_steps else None


def constant(optimizer: Any, total_steps: int, warmup_steps: int = 0) -> Any:
    """Linear warmup over ``warmup_steps``, then the optimizer's lr."""
    return _lambda(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)


def cosine(optimizer: Any, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
           min_lr: float | None = None) -> Any:
    """Linear warmup, then cosine decay to ``min_lr`` (or ``min_lr_ratio`` x lr) at the last step."""
    low = floor_ratio(optimizer, min_lr, min_lr_ratio)

    def fn(step: int) -> float:
        w = _warmup(step, warmup_steps)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda(optimizer, fn)


def linear(optimizer: Any, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
           min_lr: float | None = None) -> Any:
    """Linear warmup, then linear decay to ``min_lr`` (or ``min_lr_ratio`` x lr) at the last step."""
    low = floor_ratio(optimizer, min_lr, min_lr_ratio)

    def fn(step: int) -> float:
        w = _warmup(step, warmup_steps)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1 - (1 - low) * progress

    return _lambda(optimizer, fn)


def wsd_factor(step: int, total_steps: int, warmup_steps: int, decay_steps: int, decay_type: str, low: float) -> float:
    """The warmup-stable-decay multiplier of the lr at ``step`` (0-based)."""
    w = _warmup(step, warmup_steps)
    if w is not None:
        return w
    decay_start = max(warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))  # the last step: min_lr
    if decay_type == "linear":
        shape = 1 - progress
    elif decay_type == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # "sqrt": 1 - sqrt(progress) (Hägele et al. 2024)
        shape = 1 - math.sqrt(progress)
    return low + (1 - low) * shape


def wsd(optimizer: Any, total_steps: int, warmup_steps: int = 0, decay_ratio: float = 0.1, decay_steps: int | None = None,
        decay_type: Literal["linear", "cosine", "sqrt"] = "linear", min_lr_ratio: float = 0.0,
        min_lr: float | None = None) -> Any:
    """Warmup-stable-decay: linear warmup over ``warmup_steps``, the optimizer's lr until the last
    ``decay_steps`` (default ``decay_ratio`` x the steps after warmup), then ``decay_type`` decay reaching
    ``min_lr`` (or ``min_lr_ratio`` x lr) at the last step. A run can be continued from any stable-phase checkpoint with more steps."""
    low = floor_ratio(optimizer, min_lr, min_lr_ratio)
    n_decay = decay_steps if decay_steps is not None else math.ceil(decay_ratio * max(0, total_steps - warmup_steps))
    return _lambda(optimizer, lambda s: wsd_factor(s, total_steps, warmup_steps, n_decay, decay_type, low))


def lr_curve(factory: Callable[..., Any], args: dict[str, Any], lr: float, total_steps: int) -> list[float]:
    """The lr of each step 1..``total_steps`` a schedule gives an optimizer whose lr is ``lr``."""
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = factory(opt, total_steps=total_steps, **args)
    out = []
    for _ in range(total_steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


# -- value checks, run by `automodel validate` before anything starts ----------------------------------


def _check_groups(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for key in ("no_decay",):
        for p in args.get(key) or []:
            try:
                re.compile(str(p))
            except re.error as e:
                out.append((key, f"{p!r} is not a regular expression ({e})", "e.g. 'lm_head' or '\\.bias$'"))
    mults = args.get("lr_multipliers")
    if mults is not None and not isinstance(mults, dict):
        out.append(("lr_multipliers", f"expected a mapping of name pattern -> factor, got {mults!r}",
                    "e.g. {lora_B: 2.0, embed_tokens: 0.1}"))
    for p, m in (mults or {}).items():
        try:
            re.compile(str(p))
        except re.error as e:
            out.append((f"lr_multipliers.{p}", f"is not a regular expression ({e})", "e.g. lora_B"))
        if not isinstance(m, (int, float)) or isinstance(m, bool) or m < 0:
            out.append((f"lr_multipliers.{p}", f"must be a number >= 0, got {m!r}", "0 freezes the matching parameters' lr"))
    return out


def _check_optimizer(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    lr = args.get("lr")
    if isinstance(lr, (int, float)) and lr <= 0:
        out.append(("lr", f"must be > 0, got {lr}", "typical fine-tuning values: 1e-5 to 3e-4"))
    wd = args.get("weight_decay")
    if isinstance(wd, (int, float)) and wd < 0:
        out.append(("weight_decay", f"must be >= 0, got {wd}", "0.0 turns it off"))
    for key in ("betas", "adamw_betas"):
        betas = args.get(key)
        if isinstance(betas, (list, tuple)) and (len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            out.append((key, f"must be two numbers in [0, 1), got {list(betas)}", "the default is [0.9, 0.999]"))
    for key in ("eps", "adamw_eps"):
        eps = args.get(key)
        if isinstance(eps, (int, float)) and eps <= 0:
            out.append((key, f"must be > 0, got {eps}", "the default is 1e-8"))
    momentum = args.get("momentum")
    if isinstance(momentum, (int, float)) and not 0 <= momentum < 1:
        out.append(("momentum", f"must be in [0, 1), got {momentum}", ""))
    return out + _check_groups(args)


def _check_bnb(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    if importlib.util.find_spec("bitsandbytes") is None:
        return [("name", BNB_MISSING.replace("the optimizer adamw_8bit needs", "needs"), "")]
    return _check_optimizer(args)


def _check_schedule(args: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    warmup = args.get("warmup_steps")
    if isinstance(warmup, int) and warmup < 0:
        out.append(("warmup_steps", f"must be >= 0, got {warmup}", "0 = no warmup"))
    ratio = args.get("min_lr_ratio")
    if isinstance(ratio, (int, float)) and not 0 <= ratio <= 1:
        out.append(("min_lr_ratio", f"must be in [0, 1] (a fraction of optimizer.lr), got {ratio}", "e.g. 0.1"))
    min_lr = args.get("min_lr")
    if isinstance(min_lr, (int, float)) and min_lr < 0:
        out.append(("min_lr", f"must be >= 0, got {min_lr}", "e.g. 1e-6"))
    if min_lr is not None and args.get("min_lr_ratio") not in (None, 0, 0.0):
        out.append(("min_lr", "give either min_lr (absolute) or min_lr_ratio (a fraction of optimizer.lr), not both", ""))
    decay_ratio = args.get("decay_ratio")
    if isinstance(decay_ratio, (int, float)) and not 0 <= decay_ratio <= 1:
        out.append(("decay_ratio", f"must be in [0, 1] (the fraction of the steps after warmup spent decaying), got {decay_ratio}",
                    "e.g. 0.1 or 0.2"))
    decay_steps = args.get("decay_steps")
    if isinstance(decay_steps, int) and decay_steps < 0:
        out.append(("decay_steps", f"must be >= 0, got {decay_steps}", "or leave it out and set decay_ratio"))
    return out


for _factory in (adamw, sgd, adafactor, muon):
    _factory.validate_args = _check_optimizer  # type: ignore[attr-defined]
adamw_8bit.validate_args = _check_bnb  # type: ignore[attr-defined]
for _factory in (constant, cosine, linear, wsd):
    _factory.validate_args = _check_schedule  # type: ignore[attr-defined]
