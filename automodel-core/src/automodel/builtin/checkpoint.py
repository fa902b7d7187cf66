"""The ``default`` checkpointer: durable, resumable training state with torch.distributed.checkpoint
(DCP), consolidated Hugging Face export with safetensors. The directory layout and its verification
are in :mod:`automodel.builtin.checkpoint_files`, the model fingerprint in
:mod:`automodel.builtin.fingerprint`, the export in :mod:`automodel.builtin.hf_export`.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from automodel.builtin.checkpoint_files import (
    FORMAT,
    LATEST,
    META,
    CheckpointError,
    CheckpointWriteError,
    DataUnpickler,
    UnsafeCheckpoint,
    candidates,
    crc32,
    fsync,
    quiet_single_process,
    read_meta,
    resolve,
    step_of,
    verify,
    write_atomic,
)
from automodel.builtin.fingerprint import (
    check_identity,
    config_changes,
    config_record,
    fingerprint,
    model_identity,
    whole_model_shapes,
)
from automodel.builtin.hf_export import export_hf

#: errno values of a save that ran out of room: full disk, quota, file-size limit (RLIMIT_FSIZE)
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large (file-size limit)"}


def _reader(path: Path) -> Any:
    """A DCP reader that unpickles ``.metadata`` as data only (:class:`DataUnpickler`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class DataReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            meta_path = (self._get_metadata_path(kwargs.get("rank")) if hasattr(self, "_get_metadata_path")
                         else Path(self.path) / ".metadata")
            try:
                with self.fs.create_stream(meta_path, "rb") as f:
                    metadata = DataUnpickler(f).load()
            except pickle.UnpicklingError as e:
                raise UnsafeCheckpoint(f"checkpoint: {path}/.metadata is not a DCP checkpoint's metadata: {e}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return DataReader(str(path))


def _planner() -> Any:
    """DCP's default load planner, with non-tensor items read by ``torch.load(weights_only=True)``."""
    import io

    import torch
    from torch.distributed.checkpoint import default_planner
    from torch.distributed.checkpoint.planner import ReadItem

    class DataLoadPlanner(default_planner.DefaultLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise UnsafeCheckpoint(f"checkpoint: the item {read_item.dest_index.fqn} is not data: "
                                       f"{str(e).splitlines()[0]}") from None
            if self.flatten_state_dict:
                default_planner.set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return DataLoadPlanner()


class Checkpointer:
    """Checkpoints under ``dir`` (default ``<output_dir>/checkpoints``) as ``step_<N>/``, written atomically.

    Args:
        dir: where checkpoints go.
        keep_last: how many complete checkpoints to keep (null keeps all).
        resume: ``auto`` (the newest complete checkpoint in ``dir``, if any), ``never``, or a path
            (a ``step_<N>`` directory, a checkpoint directory or a run directory).
        export_hf: write ``<output_dir>/hf`` (safetensors + config + tokenizer) at the end.
        save_final: checkpoint after the last step.
        allow_config_change: resume although the config changed in a way that changes the training
            trajectory (optimizer and schedule settings such as lr, steps, batch size, seed, data, loss):
            the new values apply from the resumed step. Without it such a resume is refused with the
            diff. Changes that make the saved state meaningless (model, transforms, optimizer or
            scheduler type) are refused either way. ``automodel run --allow-config-change`` sets it.
    """

    def __init__(
        self,
        ctx: Any,
        dir: str | None = None,
        keep_last: int | None = 2,
        resume: str = "auto",
        export_hf: bool = True,
        save_final: bool = True,
        allow_config_change: bool = False,
    ):
        self.ctx = ctx
        self.allow_config_change = allow_config_change
        self.dir = Path(dir) if dir else Path(ctx.output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.resume = resume
        self.export_hf = export_hf
        self.save_final = save_final

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
        from automodel import runtime

        runtime.barrier()

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

    def _check_finite(self, model: Any, step: int) -> None:
        """Refuse to save non-finite parameters (one flag per parameter on the device, one sync; all
        ranks agree): such a checkpoint never becomes ``latest``; the error names the newest finite one."""
        import torch

        from automodel import runtime

        # trainable parameters only: frozen ones do not change between saves (and quantized frozen bases,
        # such as torchao's NF4 tensors, have no isfinite)
        named = [(n, p.to_local() if hasattr(p, "to_local") else p) for n, p in model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            bad = (torch.stack([~torch.isfinite(p).all() for _, p in named]).to(torch.int32) if named
                   else torch.zeros(1, dtype=torch.int32, device=self.ctx.device))
        # one flag per rank (ranks may hold different parameters: pipeline stages), then the names
        if not int(runtime.all_reduce(bad.max().reshape(1), "max")):
            return
        mine = [n for (n, _), f in zip(named, bad.tolist()) if f]
        names = [n for part in self._gather(mine) for n in part]
        good = self.steps()
        where = (f"the newest finite checkpoint is step {good[-1]} ({self.dir / f'step_{good[-1]}'}): resume from it "
                 "(checkpoint.resume=auto picks it) after finding the cause" if good else "no checkpoint was saved before it")
        raise CheckpointError(
            f"checkpoint: step {step} not saved: parameters are not finite (NaN or Inf) in {names[0]}"
            + (f" and {len(names) - 1} more" if len(names) > 1 else "") + f"; {where}\n"
            "    -> a plugin that writes weights, or a bad update: lower optimizer.lr, keep clip_grad_norm on, "
            "use model.dtype bfloat16/float32"
        )

    def _no_room(self, error: BaseException, step: int, tmp: Path, sd: dict[str, Any]) -> CheckpointWriteError | None:
        """A :class:`CheckpointWriteError` when ``error`` (or its cause, or a DCP rank failure) is a
        full disk / quota / file-size limit, saying what failed, how much room it needs and has."""
        import resource

        seen, todo, found = set(), [error], None
        while todo and found is None:
            e = todo.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            if isinstance(e, OSError) and e.errno in _NO_ROOM:
                found = e
                break
            todo += [e.__cause__, e.__context__]
            todo += [v for v in (getattr(e, "failures", None) or {}).values() if isinstance(v, BaseException)]
            todo += [v[0] for v in (getattr(e, "failures", None) or {}).values() if isinstance(v, tuple) and v
                     and isinstance(v[0], BaseException)]
        if found is None and "No space left" not in str(error) and "File too large" not in str(error):
            return None
        previous = self.steps()
        if previous:
            need = sum(read_meta(self.dir / f"step_{previous[-1]}")["files"].values())
            need_text = f"about {need / 2**20:.1f} MiB (the size of step {previous[-1]})"
        else:
            need = sum(t.numel() * t.element_size() for t in _tensors(sd))
            need_text = f"at least {need / 2**20:.1f} MiB (this rank's model and optimizer tensors)"
        try:
            free = f"{shutil.disk_usage(self.dir).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit_text = f"; the file-size limit (ulimit -f) is {limit / 2**20:.1f} MiB" if limit != resource.RLIM_INFINITY else ""
        reason = _NO_ROOM.get(getattr(found, "errno", None), "no room") if found is not None else "no room"
        what = f" writing {found.filename}" if found is not None and found.filename else f" while writing {tmp}"
        kept = (f"the last good checkpoint step {previous[-1]} is kept and stays latest" if previous
                else "no earlier checkpoint exists")
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        return CheckpointWriteError(
            f"checkpoint: saving step {step} to {self.dir} failed{what}: {reason}; it needs {need_text}, "
            f"{free} in {self.dir}{limit_text}; {kept}\n"
            "    -> free space (or raise the quota / ulimit -f), or set checkpoint.dir to a larger filesystem, "
            "then run again: it resumes from the last good checkpoint"
        )

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write a complete checkpoint for ``step`` (collective: every rank calls it)."""
        import torch.distributed.checkpoint as dcp

        self._check_finite(state["model"], step)
        with _sigxfsz_ignored():  # a file-size limit is an error to report, not a signal that kills the run
            sd = self._dcp_state(state)
            tmp = self.dir / f".tmp-step_{step}"
            try:
                return self._save(state, sd, step, tmp)
            except (OSError, dcp.api.CheckpointException) as e:
                error = self._no_room(e, step, tmp, sd)
                if error is None:
                    raise
                raise error from e

    def _save(self, state: dict[str, Any], sd: dict[str, Any], step: int, tmp: Path) -> Path:
        import torch
        import torch.distributed.checkpoint as dcp

        from automodel import config as config_mod
        from automodel.state import rng_state

        ctx, start = self.ctx, time.perf_counter()
        final = self.dir / f"step_{step}"
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()

        with quiet_single_process():
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
        rank_file = tmp / f"rank_{ctx.rank}.pt"
        with rank_file.open("wb") as f:  # tensors and plain data only: loaded with weights_only=True
            torch.save({"rank": ctx.rank, "world_size": ctx.world_size, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        # each rank checksums the files it wrote (DCP names them __<rank>_<i>.distcp), in parallel
        mine = {p.name: crc32(p) for p in tmp.iterdir() if p.name.startswith(f"__{ctx.rank}_") or p == rank_file}
        crcs = self._gather(mine)
        shapes = whole_model_shapes(sd["model"])  # collective: pipeline stages hold parts of the model

        if ctx.is_main:
            (tmp / "config.yaml").write_text(config_mod.dump(ctx.config))  # credentials redacted
            fsync(tmp / "config.yaml")
            identity = model_identity(state, ctx.config, sd["model"], shapes)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            checksums = {name: crc for part in crcs for name, crc in part.items()}
            checksums.update({name: crc32(tmp / name) for name in files if name not in checksums})
            meta = {
                "format": FORMAT, "step": step, "world_size": ctx.world_size, "dp_size": ctx.dp_size,
                "time": time.time(), "fingerprint": fingerprint(identity), "identity": identity, "files": files,
                "crc32": checksums, "finite": True, **config_record(ctx.config or {}),
            }
            write_atomic(tmp / META, json.dumps(meta, indent=1))
            fsync(tmp)
            if final.exists():  # the same step saved again: swap it out without a window of nothing
                trash = self.dir / f".trash-step_{step}"
                shutil.rmtree(trash, ignore_errors=True)
                os.rename(final, trash)
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, final)
            fsync(self.dir)
            write_atomic(self.dir / LATEST, final.name + "\n")
            self._prune(keep=final)
            size = sum(files.values())
            ctx.print(f"checkpoint: saved step {step} to {final} ({size / 2**20:.1f} MiB, {time.perf_counter() - start:.2f} s)")
        self._barrier()
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

    def _config_check(self, path: Path, meta: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
        """Compare this run's config with the one ``path`` was saved with: print what changed; raise
        :class:`CheckpointError` (exit 2, the diff, how to proceed) for a change the saved state cannot
        follow, or a trajectory change without ``allow_config_change``. Returns the changes."""
        if "config" not in meta:  # a checkpoint from before config records: compare with its config.yaml
            import yaml

            try:
                old = yaml.safe_load((path / "config.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                return []
            meta = {**meta, **config_record(old)}
        changes = config_changes(meta, config_record(self.ctx.config or {}))
        if not changes:
            return []
        step = meta.get("step")

        def show(items: list[tuple[str, Any, Any, str]], note: dict[str, str]) -> str:
            return "\n".join(f"  - {k}: {a!r} -> {b!r}{note.get(kind, '')}" for k, a, b, kind in items)

        notes = {"refused": "  (the saved state cannot follow this)", "allowed": "  (changes the training trajectory)",
                 "free": ""}
        refused = [c for c in changes if c[3] == "refused"]
        allowed = [c for c in changes if c[3] == "allowed"]
        if refused:
            keys = ", ".join(c[0] for c in refused)
            raise CheckpointError(
                f"checkpoint: {keys} changed since step {step} was saved ({path}); the saved state means nothing "
                f"to the new setting, so this run cannot resume from it:\n{show(changes, notes)}\n"
                "    -> put the old value(s) back to resume; or start a new run from these weights: "
                f"`automodel export {path} <dir>` then model.pretrained=<dir> with another output_dir "
                "(or checkpoint.resume=never to start over here)"
            )
        if allowed and not self.allow_config_change:
            keys = ", ".join(c[0] for c in allowed)
            raise CheckpointError(
                f"checkpoint: {keys} changed since step {step} was saved ({path}); refusing to resume with a "
                f"different training trajectory without being told:\n{show(changes, notes)}\n"
                "    -> to resume with the new values from this step: run again with --allow-config-change "
                "(or checkpoint.allow_config_change=true); to continue as before: put the old value(s) back; "
                "to start over: checkpoint.resume=never or another output_dir"
            )
        head = f"checkpoint: the config changed since step {step} was saved; applying from step {step}:"
        self.ctx.print(head + "\n" + show(changes, {"allowed": "  (allowed: checkpoint.allow_config_change)"}))
        return changes

    @staticmethod
    def _apply_hyperparameters(state: dict[str, Any], fresh: list[dict[str, Any]], fresh_base: list[float] | None) -> None:
        """After loading: the optimizer's hyperparameters (lr, weight decay, betas...) and the scheduler's
        base lrs of this run's config, not the checkpoint's; the lr recomputed at the resumed step."""
        optimizer, scheduler = state["optimizer"], state.get("lr_scheduler")
        for group, new in zip(optimizer.param_groups, fresh):
            group.update(new)
        if scheduler is None or fresh_base is None:
            return
        scheduler.base_lrs = list(fresh_base)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        for i, group in enumerate(optimizer.param_groups):
            group["initial_lr"] = fresh_base[i]
            if lambdas is not None and callable(lambdas[i]):
                group["lr"] = fresh_base[i] * lambdas[i](scheduler.last_epoch)
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    def load(self, state: dict[str, Any]) -> int | None:
        """Restore ``state`` in place from the newest usable checkpoint; the step, or None to start fresh.

        Falls back to an older checkpoint only when the newer one is damaged (fails its checksums);
        an intact checkpoint that does not fit this run (a config change) is an error, never skipped."""
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from automodel.state import set_rng_state

        paths = self._choose()
        for i, path in enumerate(paths):
            start = time.perf_counter()
            sd = self._dcp_state(state)
            meta = check_identity(
                path, state["model"], self.ctx.config, sd["model"],
                f"checkpoint: {path} was written by a different model; refusing to resume from it",
                "resume with the original model config, or start fresh: checkpoint.resume=never "
                "(or another output_dir / checkpoint.dir)",
            )
            changes = self._config_check(path, meta)
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in state["optimizer"].param_groups]
            fresh_base = list(getattr(state.get("lr_scheduler"), "base_lrs", []) or []) or None
            _reader(path).read_metadata()  # data only: a planted pickle is refused here, by name
            # which parameters each group holds is this run's: a checkpoint written by pipeline stages
            # (automodel-pp) stores rank 0's lists only (the hyperparameters come from the checkpoint)
            own_params = [g.get("params") for g in sd["optimizer"].get("param_groups", [])]
            try:
                with quiet_single_process():
                    dcp.load(sd, storage_reader=_reader(path), planner=_planner())
                for group, params in zip(sd["optimizer"].get("param_groups", []), own_params):
                    group["params"] = params
            except UnsafeCheckpoint:
                raise
            except (Exception, dcp.api.CheckpointException) as e:
                damage = verify(path, checksums=True)
                if damage is None:  # intact: not damage, so never a reason to go back to an older step
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise CheckpointError(
                        f"checkpoint: {path} is intact (checksums match) but does not fit this run's state "
                        f"({type(e).__name__}: {first[:300]})\n"
                        "    -> the run's components changed in a way the config diff does not show (a plugin's "
                        "version or settings); restore them, or start over with checkpoint.resume=never"
                    ) from e
                if self.resume != "auto" or i == len(paths) - 1:
                    raise CheckpointError(f"checkpoint: cannot load {path}: {damage}") from e
                self.ctx.print(f"checkpoint: cannot load {path} ({damage}); trying the previous one")
                continue
            set_state_dict(state["model"], state["optimizer"], model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
            for key, obj in state.items():
                if key in sd and key not in ("model", "optimizer") and hasattr(obj, "load_state_dict"):
                    obj.load_state_dict(sd[key])
            if any(kind == "allowed" for *_, kind in changes):
                self._apply_hyperparameters(state, fresh, fresh_base)
            rank_file = path / f"rank_{self.ctx.rank}.pt"
            if rank_file.exists():
                try:
                    rank_state = torch.load(rank_file, weights_only=True)  # data only, never code
                except pickle.UnpicklingError as e:
                    raise UnsafeCheckpoint(
                        f"checkpoint: {rank_file} holds more than tensors and plain data, so it is not loaded "
                        f"(loading a checkpoint never runs code): {str(e).splitlines()[0]}\n"
                        "    -> if you wrote it with an older automodel, delete that file to resume without restoring "
                        "the random generators; otherwise do not trust this checkpoint"
                    ) from None
                set_rng_state(rank_state["rng"])
            if meta.get("world_size") != self.ctx.world_size:
                self.ctx.print(
                    f"checkpoint: resuming a {meta.get('world_size')}-process checkpoint with {self.ctx.world_size} "
                    "process(es): model and optimizer are resharded; the data order continues where it stopped"
                )
            step = int(meta["step"])
            self.ctx.print(f"checkpoint: loaded step {step} from {path} ({time.perf_counter() - start:.2f} s)")
            return step
        return None

    # -- export ---------------------------------------------------------------------------------------

    def load_model(self, model: Any, path: str | os.PathLike[str]) -> int:
        """Restore only the model weights from the checkpoint at ``path`` (a ``step_<N>`` directory, a
        checkpoint directory or a run directory: its newest complete checkpoint); returns its step.
        Used by ``automodel export``; the model must match the one that wrote the checkpoint."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        found = resolve(path, report=self.ctx.print)
        sd = get_model_state_dict(model)
        meta = check_identity(found, model, self.ctx.config, sd,
                              f"export: the model rebuilt from the config does not match the checkpoint {found}")
        _reader(found).read_metadata()  # data only: a planted pickle is refused here, by name
        with quiet_single_process():
            dcp.load({"model": sd}, storage_reader=_reader(found), planner=_planner())
        set_model_state_dict(model, sd)
        return int(meta["step"])

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
        """Consolidated safetensors (+ index) + config + tokenizer that ``from_pretrained`` loads as is."""
        return export_hf(model, tokenizer, out_dir, self.ctx)


def _tensors(sd: Any) -> list[Any]:
    """Every tensor in a nested state dict (local shards of DTensors)."""
    if isinstance(sd, dict):
        return [t for v in sd.values() for t in _tensors(v)]
    if isinstance(sd, (list, tuple)):
        return [t for v in sd for t in _tensors(v)]
    if hasattr(sd, "to_local"):
        return [sd.to_local()]
    return [sd] if hasattr(sd, "element_size") else []


class _sigxfsz_ignored:
    """While saving, a write past the file-size limit (``ulimit -f``) fails with EFBIG instead of
    killing the process with SIGXFSZ, so the failure can be reported (main thread only)."""

    def __enter__(self) -> None:
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except (ValueError, AttributeError):  # not the main thread / no SIGXFSZ on this platform
            pass

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGXFSZ, self.previous)
