"""Builtin model transforms."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from automodel.blocks import checkpoint_blocks, find_blocks
from automodel.errors import AutomodelError


class ActivationCheckpointing:
    """Recompute every decoder block's activations in backward: activation memory falls to about one
    block's worth, for roughly a third more compute. Works with any layout (one process, ddp, tp,
    fsdp2), since it is applied before the parallelizers.

    Args:
        block_classes: class names of the blocks to checkpoint (default: the model's ``_no_split_modules``).
    """

    def __init__(self, block_classes: list[str] | None = None):
        self.block_classes = list(block_classes) if block_classes else None

    def apply(self, model: Any, ctx: Any) -> Any:
        blocks = find_blocks(model, self.block_classes, key="transforms.activation_checkpointing.block_classes")
        if not blocks:
            raise AutomodelError(f"transforms.activation_checkpointing: found no decoder blocks in {type(model).__name__}; "
                                 "name them with block_classes: [<class name>]")
        checkpoint_blocks(blocks)
        ctx.print(f"activation checkpointing: {len(blocks)} {type(blocks[0]).__name__} blocks")
        return model


# --------------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------------

SCOPES = ("blocks", "model")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SHARDING = {"fsdp2", "tp"}  # parallelizers that hook every block: one whole-model graph would break at each hook


class Compile:
    """``torch.compile`` the model: each decoder block separately (``scope: blocks``, regional
    compilation: one graph shared by all blocks, compile time flat in the number of layers) or the whole
    model's forward (``scope: model``). The block's ``forward`` is compiled, not the module call, so
    module hooks (activation checkpointing, FSDP2's all-gathers) stay outside the graph: it composes
    with LoRA, activation checkpointing and fsdp2 in any transform order (tp is refused, see
    docs/compile.md). Parameter names are
    unchanged (checkpoints, exports and sharding plans see the same model). See docs/compile.md.

    Args:
        scope: ``blocks`` (default) or ``model``.
        mode: torch.compile mode (``default``, ``reduce-overhead``, ``max-autotune``, ...).
        fullgraph: fail on a graph break instead of splitting the graph (default false).
        dynamic: ``null`` (default: automatic dynamic shapes, a shape that changes recompiles once as
            dynamic), ``true`` (dynamic from the start), ``false`` (never dynamic: one graph per shape).
        backend: torch.compile backend (``inductor``; ``aot_eager`` traces without generating code).
        block_classes: class names of the blocks (default: the model's ``_no_split_modules``).
        cache_dir: compiler cache kept between runs (default ``<output_dir>/compile_cache``; a resumed
            run reuses it); ``TORCHINDUCTOR_CACHE_DIR`` set in the environment wins over the default.
        warn_recompiles: warn when graphs are still being compiled after this many logging windows.
    """

    def __init__(self, scope: str = "blocks", mode: str = "default", fullgraph: bool = False, dynamic: bool | None = None,
                 backend: str = "inductor", block_classes: list[str] | None = None, cache_dir: str | None = None,
                 warn_recompiles: int = 3):
        self.scope, self.mode, self.fullgraph, self.dynamic, self.backend = scope, mode, fullgraph, dynamic, backend
        self.block_classes = list(block_classes) if block_classes else None
        self.cache_dir, self.warn_recompiles = cache_dir, warn_recompiles
        self._graphs_after_first: int | None = None
        self._windows_recompiling = 0
        self._last_recompiles = 0
        self._warned = False
        self._ctx: Any = None

    def apply(self, model: Any, ctx: Any) -> Any:
        import torch

        self._ctx = ctx
        self._set_cache_dir(ctx)
        opts: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.mode != "default":
            opts["mode"] = self.mode
        if self.scope == "model":
            targets = [model]
        else:
            targets = find_blocks(model, self.block_classes, key="transforms.compile.block_classes")
            if not targets:
                raise AutomodelError(f"transforms.compile: found no decoder blocks in {type(model).__name__}; name them "
                                     "with block_classes: [<class name>], or compile the whole model with scope: model")
        for module in targets:  # an instance attribute: hooks on the module stay outside the compiled region
            module.forward = torch.compile(module.forward, **opts)
        what = f"{len(targets)} {type(targets[0]).__name__} blocks" if self.scope == "blocks" else "the whole model"
        ctx.print(f"compile: {what} (backend {self.backend}, mode {self.mode}, dynamic {self.dynamic}, "
                  f"fullgraph {self.fullgraph}); cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
        return model

    def _set_cache_dir(self, ctx: Any) -> None:
        if self.cache_dir:
            path = Path(self.cache_dir).expanduser()
        elif os.environ.get("TORCHINDUCTOR_CACHE_DIR") not in (None, "", _torch_default_cache_dir()):
            return  # the user's (torch itself writes its default there on first use: not a choice)
        elif getattr(ctx, "output_dir", None) is not None:
            path = Path(ctx.output_dir) / "compile_cache"
        else:
            return
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by inductor at each use: FX graph + AOT caches
        os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))

    def metrics(self) -> dict[str, float]:
        """Merged into every logged step: ``compile_s`` (seconds spent compiling so far; the trainer keeps it
        out of ``tokens_per_s``) and ``recompiles`` (graphs compiled after the first logged step)."""
        from torch._dynamo.utils import compilation_time_metrics, counters

        seconds = sum(sum(compilation_time_metrics.get(k, ())) for k in ("_compile.compile_inner", "backward._backward_impl"))
        graphs = int(counters["stats"]["unique_graphs"])
        if self._graphs_after_first is None:
            self._graphs_after_first = graphs
        recompiles = graphs - self._graphs_after_first
        if recompiles > self._last_recompiles:
            self._windows_recompiling += 1
            if self._windows_recompiling >= self.warn_recompiles and not self._warned and self._ctx is not None:
                self._warned = True
                self._ctx.print(
                    f"warning: compile: {recompiles} recompilations so far and shapes keep changing; each costs compile time "
                    "and after torch._dynamo.config.recompile_limit the blocks run eagerly. Keep shapes static (packed "
                    "rows of a fixed length, pad_to_multiple_of) or set dynamic: true in transforms.compile "
                    "(docs/compile.md, 'Recompilations')")
        self._last_recompiles = recompiles
        return {"compile_s": round(seconds, 3), "recompiles": recompiles}


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except Exception:  # pragma: no cover - private torch API moved
        return None


def validate_compile(args: dict[str, Any], config: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """The values, and the layout: a whole-model graph cannot hold the per-block hooks of fsdp2 / tp."""
    out: list[tuple[str, str, str]] = []
    scope = args.get("scope", "blocks")
    if scope not in SCOPES:
        out.append(("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}", "blocks (regional, the default) or model"))
    mode = args.get("mode", "default")
    if mode not in MODES:
        out.append(("mode", f"unknown torch.compile mode {mode!r}", f"one of {', '.join(MODES)}"))
    dynamic = args.get("dynamic")
    if dynamic is not None and not isinstance(dynamic, bool):
        out.append(("dynamic", f"must be true, false or null, got {dynamic!r}", "null: automatic dynamic shapes"))
    backend = args.get("backend", "inductor")
    try:
        import torch._dynamo

        known = set(torch._dynamo.list_backends(exclude_tags=()))
    except Exception:  # pragma: no cover - torch without dynamo
        known = set()
    if known and isinstance(backend, str) and backend not in known:
        out.append(("backend", f"unknown torch.compile backend {backend!r}", f"one of {', '.join(sorted(known))}"))
    config = config or {}
    transforms = [t for t in config.get("transforms") or [] if isinstance(t, dict)]
    if sum(t.get("name") == "compile" for t in transforms) > 1:
        out.append(("", "is listed twice in transforms", "keep one compile transform"))
    sharding = sorted({p.get("name") for p in config.get("parallel") or [] if isinstance(p, dict)} & SHARDING)
    if "tp" in sharding:
        out.append(("", "does not work with the tp parallelizer yet: on torch 2.13 the backward of a compiled block with "
                    "DTensor (tensor-parallel) activations fails inside DTensor's redistribute ('Tensor' object has no "
                    "attribute '_local_tensor')", "train tp eagerly (drop compile), or shard with fsdp2, which composes "
                    "with compile (docs/compile.md, 'Composition')"))
    elif scope == "model" and sharding:
        out.append(("scope", f"a whole-model graph cannot hold {'/'.join(sharding)}'s per-block hooks (all-gathers, "
                    "reduce-scatters): the graph would break at every block, or fail with fullgraph",
                    "use scope: blocks (compile each block, then shard it: the order torch documents for FSDP2)"))
    if args.get("fullgraph") and (config.get("model") or {}).get("attn_implementation") == "sdpa_packed":
        out.append(("fullgraph", "cannot hold sdpa_packed attention: it runs eagerly inside the compiled block (its "
                    "sample boundaries change with every batch), which is a graph break",
                    "drop fullgraph (the rest of each block is still compiled), or use attn_implementation: sdpa"))
    return out


Compile.validate_args = staticmethod(validate_compile)  # type: ignore[attr-defined]
