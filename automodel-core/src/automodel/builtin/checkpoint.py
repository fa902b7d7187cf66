"""The ``default`` checkpointer: durable, resumable training state with torch.distributed.checkpoint
(DCP), consolidated Hugging Face export with safetensors.

Layout of ``checkpoint.dir`` (default ``<output_dir>/checkpoints``)::

    latest                  "step_<N>": the newest complete checkpoint (written last, atomically)
    step_<N>/
      .metadata, *.distcp   DCP: model, optimizer (sharded as trained: resumable at any world size),
                            lr_scheduler, train_state (step, epoch, data position) and other stateful items
      rank_<r>.pt           per-rank state: random generators (python, numpy, torch, cuda)
      config.yaml           the resolved config of the run that wrote it
      meta.json             written last: step, world size, fingerprint, and every file with its size
    .tmp-step_<N>/          a checkpoint being written (never resumed from; removed by the next save)

A checkpoint is complete when ``step_<N>/meta.json`` exists and every file it lists has the recorded size.
Writes go to ``.tmp-step_<N>``, are fsynced, and the directory is renamed to ``step_<N>`` before ``latest``
moves: a process killed at any moment leaves at worst a temp dir, never a half-written ``step_<N>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError

LATEST = "latest"
META = "meta.json"
FORMAT = 1
_STEP_DIR = re.compile(r"step_(\d+)")
_TRAINING_ONLY_KEYS = {  # model config fields that do not change what the weights mean
    "name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "attn_implementation",
}


class CheckpointError(AutomodelError):
    """A checkpoint cannot be used: missing, incomplete, or written by a different model."""


# --------------------------------------------------------------------------------------------------
# Finding and verifying checkpoints (no torch needed)
# --------------------------------------------------------------------------------------------------


def step_of(path: str | os.PathLike[str]) -> int | None:
    m = _STEP_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in 16 MiB blocks."""
    value = 0
    with path.open("rb") as f:
        while block := f.read(16 << 20):
            value = zlib.crc32(block, value)
    return value


def verify(path: str | os.PathLike[str], checksums: bool = False) -> str | None:
    """Why the checkpoint at ``path`` is not complete, or None when it is. Sizes are always checked;
    with ``checksums`` every file's CRC-32 too (reads the whole checkpoint: done for the one resumed)."""
    path = Path(path)
    meta_path = path / META
    if not path.is_dir():
        return "not a directory"
    if not meta_path.is_file():
        return f"no {META} (the save did not finish)"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {META}: {e}"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, expected {size} (truncated or corrupted)"
    if ".metadata" not in files:
        return "no DCP .metadata"
    if checksums:
        for name, expected in (meta.get("crc32") or {}).items():
            if crc32(path / name) != expected:
                return f"file {name} is damaged (its CRC-32 differs from the one recorded at save)"
    return None


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def candidates(directory: str | os.PathLike[str]) -> list[Path]:
    """``step_<N>`` directories under ``directory``, newest first (complete or not)."""
    directory = Path(directory)
    found = [(s, p) for p in directory.glob("step_*") if (s := step_of(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def newest_complete(directory: str | os.PathLike[str], report: Any = None) -> Path | None:
    """The newest complete checkpoint under ``directory``; incomplete ones are reported and skipped."""
    for path in candidates(directory):
        reason = verify(path, checksums=True)
        if reason is None:
            return path
        if report:
            report(f"checkpoint {path} is incomplete or corrupted ({reason}); trying the previous one")
    return None


def resolve(path: str | os.PathLike[str], report: Any = None) -> Path:
    """A checkpoint from ``path``: a ``step_<N>`` directory, a checkpoint directory, or a run directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    if (path / META).exists() or step_of(path) is not None:
        reason = verify(path, checksums=True)
        if reason:
            raise CheckpointError(f"checkpoint: {path} is not usable: {reason}; pick another step_<N> directory")
        return path
    for directory in (path, path / "checkpoints"):
        found = newest_complete(directory, report)
        if found is not None:
            return found
    raise CheckpointError(
        f"checkpoint: no complete checkpoint in {path}; give a step_<N> directory, its parent, or a run directory"
    )


# --------------------------------------------------------------------------------------------------
# Fingerprint: refuse to resume a different model
# --------------------------------------------------------------------------------------------------


def model_identity(state: dict[str, Any], config: dict[str, Any], model_sd: dict[str, Any]) -> dict[str, Any]:
    """What must match to resume: the architecture config, the transforms' names, every parameter's name and shape."""
    from automodel.weights import unwrap

    hf_config = getattr(unwrap(state["model"]), "config", None)
    arch = hf_config.to_dict() if hasattr(hf_config, "to_dict") else {}
    arch = {k: v for k, v in sorted(arch.items()) if k not in _TRAINING_ONLY_KEYS and not k.startswith("_")}
    # the transforms by name (the plugin set that shapes the parameters); their settings may change on
    # resume (LoRA dropout, say) unless they change a parameter shape, which ``shapes`` catches
    transforms = [t.get("name", t.get("_target_")) for t in config.get("transforms") or []]
    shapes = {k: list(v.shape) for k, v in sorted(model_sd.items()) if hasattr(v, "shape")}
    return json.loads(json.dumps({"model": arch, "transforms": transforms, "shapes": shapes}, default=str))


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(saved: dict[str, Any], current: dict[str, Any], limit: int = 8) -> list[str]:
    out = []
    if saved.get("transforms") != current.get("transforms"):
        out.append(f"transforms: checkpoint {saved.get('transforms')}, this run {current.get('transforms')}")
    for key, label in (("model", "model config"), ("shapes", "parameter")):
        a, b = saved.get(key, {}), current.get(key, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name, "<absent>") != b.get(name, "<absent>"):
                out.append(f"{label} {name}: checkpoint {a.get(name, '<absent>')}, this run {b.get(name, '<absent>')}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


# --------------------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


class Checkpointer:
    """Checkpoints under ``dir`` (default ``<output_dir>/checkpoints``) as ``step_<N>/``, written atomically.

    Args:
        dir: where checkpoints go.
        keep_last: how many complete checkpoints to keep (null keeps all).
        resume: ``auto`` (the newest complete checkpoint in ``dir``, if any), ``never``, or a path
            (a ``step_<N>`` directory, a checkpoint directory or a run directory).
        export_hf: write ``<output_dir>/hf`` (safetensors + config + tokenizer) at the end.
        save_final: checkpoint after the last step.
    """

    def __init__(
        self,
        ctx: Any,
        dir: str | None = None,
        keep_last: int | None = 2,
        resume: str = "auto",
        export_hf: bool = True,
        save_final: bool = True,
    ):
        self.ctx = ctx
        self.dir = Path(dir) if dir else Path(ctx.output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.resume = resume
        self.export_hf = export_hf
        self.save_final = save_final
        self.last_saved: int | None = None

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        out = []
        keep = args.get("keep_last")
        if isinstance(keep, int) and keep < 1:
            out.append(("keep_last", f"must be >= 1 or null (keep all), got {keep}", ""))
        resume = args.get("resume", "auto")
        if isinstance(resume, str) and resume not in ("auto", "never") and not Path(resume).expanduser().exists():
            out.append(("resume", f"'{resume}' is neither auto, never, nor an existing path",
                        "use resume: auto (newest checkpoint in checkpoint.dir), never, or a step_<N> directory"))
        directory = args.get("dir")
        if isinstance(directory, str) and Path(directory).expanduser().exists() and not Path(directory).expanduser().is_dir():
            out.append(("dir", f"{directory} exists and is not a directory", "point checkpoint.dir at a directory"))
        return out

    # -- helpers ----------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints in ``dir``, oldest first."""
        return sorted(s for p in candidates(self.dir) if verify(p) is None and (s := step_of(p)) is not None)

    def _barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, on every rank (a list in rank order)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            out: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(out, value)
            return out
        return [value]

    def _broadcast(self, value: Any) -> Any:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [value]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return value

    def _dcp_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Model and optimizer through ``get_state_dict`` (plain or DTensor-sharded, wrapper-free names),
        every other stateful item through its ``state_dict()``."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(state["model"], state["optimizer"])
        out = {"model": model_sd, "optimizer": optim_sd}
        for key, obj in state.items():
            if key not in out and hasattr(obj, "state_dict"):
                out[key] = obj.state_dict()
        return out

    # -- save -------------------------------------------------------------------------------------

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write a complete checkpoint for ``step`` (collective: every rank calls it)."""
        import torch
        import torch.distributed.checkpoint as dcp

        from automodel import config as config_mod
        from automodel.state import rng_state

        ctx, start = self.ctx, time.perf_counter()
        final, tmp = self.dir / f"step_{step}", self.dir / f".tmp-step_{step}"
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()

        sd = self._dcp_state(state)
        with _quiet_single_process():
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
        rank_file = tmp / f"rank_{ctx.rank}.pt"
        with rank_file.open("wb") as f:
            torch.save({"rank": ctx.rank, "world_size": ctx.world_size, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        # each rank checksums the files it wrote (DCP names them __<rank>_<i>.distcp), in parallel
        mine = {p.name: crc32(p) for p in tmp.iterdir() if p.name.startswith(f"__{ctx.rank}_") or p == rank_file}
        crcs = self._gather(mine)

        if ctx.is_main:
            (tmp / "config.yaml").write_text(config_mod.dump(ctx.config))
            _fsync(tmp / "config.yaml")
            identity = model_identity(state, ctx.config, sd["model"])
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            checksums = {name: crc for part in crcs for name, crc in part.items()}
            checksums.update({name: crc32(tmp / name) for name in files if name not in checksums})
            meta = {
                "format": FORMAT, "step": step, "world_size": ctx.world_size, "dp_size": ctx.dp_size,
                "time": time.time(), "fingerprint": fingerprint(identity), "identity": identity, "files": files,
                "crc32": checksums,
            }
            _write_atomic(tmp / META, json.dumps(meta, indent=1))
            _fsync(tmp)
            if final.exists():  # the same step saved again: swap it out without a window of nothing
                trash = self.dir / f".trash-step_{step}"
                shutil.rmtree(trash, ignore_errors=True)
                os.rename(final, trash)
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync(self.dir)
            _write_atomic(self.dir / LATEST, final.name + "\n")
            self._prune(keep=final)
            size = sum(files.values())
            ctx.print(f"checkpoint: saved step {step} to {final} ({size / 2**20:.1f} MiB, {time.perf_counter() - start:.2f} s)")
        self._barrier()
        self.last_saved = step
        return final

    def _prune(self, keep: Path) -> None:
        for stale in [*self.dir.glob(".tmp-step_*"), *self.dir.glob(".trash-step_*")]:
            shutil.rmtree(stale, ignore_errors=True)
        current = step_of(keep) or 0
        complete, broken = [], []
        for p in candidates(self.dir):
            (complete if verify(p) is None else broken).append(p)
        doomed = [p for p in broken if (step_of(p) or 0) < current]  # never resumable: reclaim the space
        doomed += complete[self.keep_last:] if self.keep_last else []
        for old in doomed:
            if old != keep:
                trash = old.with_name(f".trash-{old.name}")
                os.rename(old, trash)  # never leave a half-deleted step_<N> behind
                shutil.rmtree(trash, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------

    def _choose(self) -> list[Path]:
        """Checkpoints to try, in order (decided on the main rank, the same on all ranks)."""
        if self.resume == "never":
            old = self.steps() if self.ctx.is_main else []
            if old:
                self.ctx.print(
                    f"checkpoint: warning: resume=never but {self.dir} already holds checkpoints (newest: step {old[-1]}); "
                    "new saves mix with them and resume: auto would pick the newest step of either run; "
                    "use a new output_dir or checkpoint.dir to keep runs apart"
                )
            return []
        if self.ctx.is_main:
            if self.resume == "auto":
                if not self.dir.exists():
                    chosen: Any = []
                else:
                    chosen = []
                    found = candidates(self.dir)
                    for path in found:
                        reason = verify(path, checksums=not chosen)  # full check for the one resumed
                        if reason is None:
                            chosen.append(str(path))
                        else:
                            self.ctx.print(f"checkpoint: skipping {path}: {reason}")
                    if found and not chosen:
                        chosen = CheckpointError(
                            f"checkpoint: {self.dir} holds checkpoints but none is complete (see above); refusing to "
                            "start over silently\n    -> start fresh with checkpoint.resume=never, or restore a checkpoint"
                        )
            else:
                try:
                    chosen = [str(resolve(self.resume, report=self.ctx.print))]
                except CheckpointError as e:
                    chosen = e
        else:
            chosen = None
        chosen = self._broadcast(chosen)
        if isinstance(chosen, Exception):
            raise chosen
        return [Path(p) for p in chosen]

    def _check_identity(self, path: Path, state: dict[str, Any], model_sd: dict[str, Any]) -> dict[str, Any]:
        meta = read_meta(path)
        current = model_identity(state, self.ctx.config, model_sd)
        if meta.get("fingerprint") != fingerprint(current):
            lines = "\n".join(f"  - {d}" for d in _differences(meta.get("identity", {}), current))
            raise CheckpointError(
                f"checkpoint: {path} was written by a different model; refusing to resume from it:\n{lines}\n"
                f"    -> resume with the original model config, or start fresh: checkpoint.resume=never "
                f"(or another output_dir / checkpoint.dir)"
            )
        return meta

    def load(self, state: dict[str, Any]) -> int | None:
        """Restore ``state`` in place from the newest usable checkpoint; the step, or None to start fresh."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from automodel.state import set_rng_state

        paths = self._choose()
        for i, path in enumerate(paths):
            start = time.perf_counter()
            sd = self._dcp_state(state)
            meta = self._check_identity(path, state, sd["model"])
            try:
                with _quiet_single_process():
                    dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path)))
            except (Exception, dcp.api.CheckpointException) as e:  # a damaged checkpoint: fall back to the previous one
                if self.resume != "auto" or i == len(paths) - 1:
                    raise CheckpointError(f"checkpoint: cannot load {path}: {e}") from e
                self.ctx.print(f"checkpoint: cannot load {path} ({type(e).__name__}: {e}); trying the previous one")
                continue
            set_state_dict(state["model"], state["optimizer"], model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
            for key, obj in state.items():
                if key in sd and key not in ("model", "optimizer") and hasattr(obj, "load_state_dict"):
                    obj.load_state_dict(sd[key])
            rank_file = path / f"rank_{self.ctx.rank}.pt"
            if rank_file.exists():
                set_rng_state(torch.load(rank_file, weights_only=False)["rng"])
            if meta.get("world_size") != self.ctx.world_size:
                self.ctx.print(
                    f"checkpoint: resuming a {meta.get('world_size')}-process checkpoint with {self.ctx.world_size} "
                    "process(es): model and optimizer are resharded; the data order continues where it stopped"
                )
            step = int(meta["step"])
            self.last_saved = step
            self.ctx.print(f"checkpoint: loaded step {step} from {path} ({time.perf_counter() - start:.2f} s)")
            return step
        return None

    # -- export -----------------------------------------------------------------------------------

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
        """Consolidated safetensors (+ index) + config + tokenizer that ``from_pretrained`` loads as is.

        Sharded (DTensor) weights are written by every rank through DCP's Hugging Face storage writer
        and consolidated into full tensors file by file, without gathering the model on one rank.
        """
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        from automodel.weights import unwrap

        out = Path(out_dir)
        sd = get_model_state_dict(model)
        sharded = any(type(v).__name__ == "DTensor" for v in sd.values())
        if sharded:
            # Tied weights (embed_tokens / lm_head) are one parameter under two names: write it once,
            # under its first name, as save_pretrained does; from_pretrained ties it again.
            seen: set[int] = set()
            for name, p in unwrap(model).named_parameters(remove_duplicate=False):
                if id(p) in seen:
                    sd.pop(name, None)
                seen.add(id(p))
            export_sharded(sd, out, self.ctx)
            if self.ctx.is_main:
                unwrap(model).config.save_pretrained(out)
                _save_generation_config(unwrap(model), out)
                tokenizer.save_pretrained(out)
        elif self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            unwrap(model).save_pretrained(out, state_dict=sd, max_shard_size="2GB")
            tokenizer.save_pretrained(out)
            _ensure_index(out)
        self._barrier()
        return out


def _ensure_index(out: Path) -> None:
    """``model.safetensors.index.json`` also for a single-file export (tools that expect an index find one)."""
    index, single = out / "model.safetensors.index.json", out / "model.safetensors"
    if index.exists() or not single.exists():
        return
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        names = list(f.keys())
    weight_map = {name: single.name for name in sorted(names)}
    index.write_text(json.dumps({"metadata": {"total_size": single.stat().st_size}, "weight_map": weight_map}, indent=2))


def _save_generation_config(model: Any, out: Path) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(out)
        except Exception:  # noqa: BLE001 - an invalid generation config should not fail the export
            pass


def export_sharded(sd: dict[str, Any], out: Path, ctx: Any, shard_bytes: int = 2 * 2**30) -> None:
    """DTensor state dict -> consolidated ``model-0000i-of-0000n.safetensors`` + index, via DCP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    mapping, index, size = {}, 1, 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if size and size + nbytes > shard_bytes:
            index, size = index + 1, 0
        mapping[name], size = index, size + nbytes
    writer = HuggingFaceStorageWriter(path=str(out), fqn_to_index_mapping=mapping, save_distributed=True, enable_consolidation=True)
    dcp.save(sd, storage_writer=writer)
    if ctx.is_main:
        shutil.rmtree(out / "sharded", ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# ``automodel export CKPT OUT``
# --------------------------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      plugin_modules: list[str] | tuple[str, ...] = (), extras: dict[str, Any] | None = None) -> Path:
    """Write a Hugging Face model directory from a training checkpoint, in this process on CPU.

    The model is rebuilt from the checkpoint's own ``config.yaml`` (model loader + transforms; the
    tokenizer and base model paths it names must still exist), its weights are loaded from the DCP
    state (any world size, sharded or not), and the run's export (a transform's, or safetensors) is written.
    """
    import torch.distributed.checkpoint as dcp
    import yaml
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from automodel import config as config_mod
    from automodel.context import Context
    from automodel.plugins import load_plugins

    path = resolve(checkpoint, report=print)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    local = list(plugin_modules) + [m for m in cfg.get("plugins") or [] if isinstance(m, str)]
    plugins = load_plugins(local)
    plugins.raise_on_failures()
    out = Path(out_dir)
    ctx = Context(device="cpu", output_dir=out, config=cfg, plugins=plugins, extras=dict(extras or {}))  # e.g. export_merged (LoRA)
    model, tokenizer = config_mod.build_component(plugins, "model_loaders", cfg["model"], ctx)
    transforms = [config_mod.build_component(plugins, "model_transforms", t) for t in cfg.get("transforms") or []]
    for t in transforms:
        model = t.apply(model, ctx)

    sd = get_model_state_dict(model)
    current = model_identity({"model": model}, cfg, sd)
    meta = read_meta(path)
    if meta.get("fingerprint") != fingerprint(current):
        lines = "\n".join(f"  - {d}" for d in _differences(meta.get("identity", {}), current))
        raise CheckpointError(f"export: the model rebuilt from {path / 'config.yaml'} does not match the checkpoint:\n{lines}")
    with _quiet_single_process():
        dcp.load({"model": sd}, storage_reader=dcp.FileSystemReader(str(path)))
    set_model_state_dict(model, sd)
    exporters = [t for t in transforms if hasattr(t, "export")]
    if exporters:
        for t in exporters:
            t.export(model, tokenizer, out, ctx)
    else:
        Checkpointer(ctx).export(model, tokenizer, out)
    return out


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """Silence DCP's 'assuming the intent is to save/load in a single process' warning (that is the intent)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield
