"""Checkpoint directories of the ``default`` checkpointer: finding them, verifying them, writing atomically.
No torch import.

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
import dataclasses
import enum
import importlib
import json
import os
import pickle
import re
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


class CheckpointError(AutomodelError):
    """A checkpoint cannot be used: missing, incomplete, or written by a different model."""


class CheckpointWriteError(CheckpointError):
    """A save failed for lack of space (full disk, quota, file-size limit): the last good checkpoint
    stays ``latest``. Exit code 74 (``EX_IOERR``)."""

    exit_code = 74


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file holds something other than data (a pickled callable): refused, never run."""


# --------------------------------------------------------------------------------------------------
# Reading pickles as data only: DCP's .metadata is a pickle
# --------------------------------------------------------------------------------------------------

_SAFE_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "str", "bytes", "bool", "complex", "slice"}


class DataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: classes that are plain records (dataclasses, enums, named tuples) of
    ``torch.distributed.checkpoint``, torch dtypes/``Size``/layouts, paths and builtin containers.
    Anything else (``os.system``, ``builtins.eval``, ...) is refused: loading a checkpoint runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = False
        if module == "builtins":
            allowed = name in _SAFE_BUILTINS
        elif module == "collections":
            allowed = name in ("OrderedDict", "defaultdict")
        elif module in ("pathlib", "pathlib._local"):
            allowed = name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
        elif module == "torch.serialization":
            allowed = name == "_get_layout"
        elif module == "torch" or module.startswith("torch.distributed.checkpoint."):
            obj = getattr(importlib.import_module(module), name.split(".")[0], None)
            for part in name.split(".")[1:]:
                obj = getattr(obj, part, None)
            import torch

            allowed = (
                isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)) or obj is torch.Size
                or (isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)
                                               or (issubclass(obj, tuple) and hasattr(obj, "_fields"))))
            )
            if allowed:
                return obj
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not data (refused: loading a checkpoint never runs code)")
        return super().find_class(module, name)


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


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync(path.parent)


def file_mode() -> int:
    """The mode a new file gets here: ``0o666`` less the process umask (``0o644`` under umask 022)."""
    try:  # Linux: read the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def normal_permissions(directory: str | os.PathLike[str], pattern: str = "*.safetensors") -> None:
    """Give the files ``pattern`` matches in ``directory`` the umask's mode. safetensors (>= 0.6) writes
    through a private temp file (mode 0600) and renames it, so an exported model would be unreadable to a
    serving process or another user where every other file is 0644."""
    mode = file_mode()
    for f in Path(directory).glob(pattern):
        if f.is_file() and (f.stat().st_mode & 0o777) != mode:
            f.chmod(mode)


@contextlib.contextmanager
def quiet_single_process() -> Iterator[None]:
    """Silence DCP's 'assuming the intent is to save/load in a single process' warning (that is the intent)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        yield
