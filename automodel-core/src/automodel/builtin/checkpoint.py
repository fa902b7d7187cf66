"""The ``default`` checkpointer: durable, resumable training state with torch.distributed.checkpoint
(DCP), consolidated Hugging Face export with safetensors. The directory layout and its verification
are in :mod:`automodel.builtin.checkpoint_files`, the model fingerprint in
:mod:`automodel.builtin.fingerprint`, the export in :mod:`automodel.builtin.hf_export`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from automodel.builtin.checkpoint_files import (
    FORMAT,
    LATEST,
    META,
    CheckpointError,
    candidates,
    crc32,
    fsync,
    quiet_single_process,
    resolve,
    step_of,
    verify,
    write_atomic,
)
from automodel.builtin.fingerprint import check_identity, fingerprint, model_identity
from automodel.builtin.hf_export import export_hf


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
        with quiet_single_process():
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
            fsync(tmp / "config.yaml")
            identity = model_identity(state, ctx.config, sd["model"])
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            checksums = {name: crc for part in crcs for name, crc in part.items()}
            checksums.update({name: crc32(tmp / name) for name in files if name not in checksums})
            meta = {
                "format": FORMAT, "step": step, "world_size": ctx.world_size, "dp_size": ctx.dp_size,
                "time": time.time(), "fingerprint": fingerprint(identity), "identity": identity, "files": files,
                "crc32": checksums,
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
            meta = check_identity(
                path, state["model"], self.ctx.config, sd["model"],
                f"checkpoint: {path} was written by a different model; refusing to resume from it",
                "resume with the original model config, or start fresh: checkpoint.resume=never "
                "(or another output_dir / checkpoint.dir)",
            )
            try:
                with quiet_single_process():
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
        with quiet_single_process():
            dcp.load({"model": sd}, storage_reader=dcp.FileSystemReader(str(found)))
        set_model_state_dict(model, sd)
        return int(meta["step"])

    def export(self, model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
        """Consolidated safetensors (+ index) + config + tokenizer that ``from_pretrained`` loads as is."""
        return export_hf(model, tokenizer, out_dir, self.ctx)
