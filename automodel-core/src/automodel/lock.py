"""An exclusive lock on a run's ``output_dir`` for the life of the run (no torch import).

Two runs writing one output directory interleave their checkpoints: one resumes the other's state,
one crashes. ``automodel run`` therefore holds ``<output_dir>/.automodel.lock`` while it trains:

* The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+,
  Lustre and GPFS, so it works across the nodes of a cluster) and holds JSON: host, pid, the pid's
  start time (to tell a reused pid apart), when the run started, the Slurm job id and a random token.
* A thread touches the file every :data:`HEARTBEAT_S` seconds: its mtime is the run's heartbeat.
* A second run finds the file and refuses, naming host, pid and since when, unless the lock is stale:
  - same host: the pid is gone (or is another process now: a different start time), e.g. ``kill -9``;
  - another host: the heartbeat is older than :data:`STALE_AFTER_S` (a node that died);
  - the same Slurm job id: a requeued job taking over its own earlier incarnation (Slurm stops the
    old one before it starts the new one).
  A stale lock is broken under a second ``O_EXCL`` guard file, re-read under that guard (still the
  same stale lock?) and only then replaced, so two runs that find the same stale lock cannot both
  take it over.
* Processes a launcher starts (torchrun workers, a Slurm job) find the token of the lock their
  launcher holds in ``AUTOMODEL_RUN_LOCK`` and do not lock again; a Slurm job whose submitting
  process has exited takes the lock itself on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from automodel.errors import AutomodelError

LOCK_NAME = ".automodel.lock"
#: environment variable that carries the lock token to the processes a launcher starts
TOKEN_ENV = "AUTOMODEL_RUN_LOCK"
HEARTBEAT_S = 30.0
#: a lock from another host whose heartbeat is older than this is stale
STALE_AFTER_S = 300.0
#: a guard file (breaking a stale lock) older than this was left by a crashed process
GUARD_STALE_S = 60.0


class RunLocked(AutomodelError):
    """Another live run holds the output directory."""


def _pid_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    since = info.get("since_text") or time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    job = f", Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    return f"host {info.get('host')}, pid {info.get('pid')}{job}, since {since}"


class RunLock:
    """The lock on ``output_dir``. :meth:`acquire` takes it (or raises :class:`RunLocked`),
    :meth:`release` gives it back; a context manager too."""

    def __init__(self, output_dir: str | os.PathLike[str], report: Any = print):
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_NAME
        self.guard = self.dir / f"{LOCK_NAME}.break"
        self.report = report
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ----------------------------------------------------------------------------------

    def read(self) -> dict[str, Any] | None:
        """The holder's record, or None when there is no lock file. An unreadable file (a holder that
        died between create and write) reads as ``{}``."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def stale_reason(self, info: dict[str, Any]) -> str | None:
        """Why the lock described by ``info`` is stale, or None while its holder may be alive."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        if not info:
            return "it is empty or unreadable" if age > GUARD_STALE_S else None
        if info.get("host") == socket.gethostname():  # on this host, whether the holder lives is known
            pid = int(info.get("pid", -1))
            if not _pid_alive(pid):
                return f"process {pid} is not running"
            started = _pid_start_time(pid)
            if started is not None and info.get("pid_start") is not None and started != info.get("pid_start"):
                return f"process {pid} is another process now (pid reused)"
            return None
        job = os.environ.get("SLURM_JOB_ID")
        if job and info.get("slurm_job_id") == job and info.get("token") != os.environ.get(TOKEN_ENV):
            return f"it belongs to an earlier run of this Slurm job {job} (requeued)"
        if age > STALE_AFTER_S:
            return f"its heartbeat stopped {age:.0f} s ago (more than {STALE_AFTER_S:.0f} s)"
        return None

    # -- taking and giving back -------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start_time(os.getpid()),
            "since": now, "since_text": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "token": self.token,
        }

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _break_stale(self, seen: dict[str, Any], reason: str) -> bool:
        """Remove the stale lock ``seen`` under the guard file; False if another process is at it."""
        try:
            fd = os.open(self.guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - self.guard.stat().st_mtime > GUARD_STALE_S:
                    self.guard.unlink()  # left by a process that died while breaking a lock
            return False
        try:
            os.close(fd)
            if self.read() != seen:  # replaced since we looked: not ours to break
                return False
            self.path.unlink(missing_ok=True)
            self.report(f"run lock: took over the stale lock of {_describe(seen) if seen else 'an unknown run'} "
                        f"in {self.dir}: {reason}")
            return True
        finally:
            self.guard.unlink(missing_ok=True)

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLocked` naming the holder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        for _ in range(20):
            if self._create():
                self._start_heartbeat()
                os.environ[TOKEN_ENV] = self.token
                return self
            info = self.read()
            if info is None:
                continue  # released in between
            reason = self.stale_reason(info)
            if reason is None:
                raise RunLocked(
                    f"output_dir: {self.dir} is in use by another run ({_describe(info)}; lock file {self.path})\n"
                    "    -> wait for that run to end, or use another output_dir; if that run is dead on a host where "
                    f"this cannot be checked, delete {self.path} (it is stale {STALE_AFTER_S:.0f} s after its last heartbeat)"
                )
            if not self._break_stale(info, reason):
                time.sleep(0.05)
        raise RunLocked(f"output_dir: could not take the lock {self.path} (other processes keep replacing it)")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="automodel-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lock back (only if this process still holds it)."""
        self._stop.set()
        if self.token is None:
            return
        info = self.read()
        if info and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        if os.environ.get(TOKEN_ENV) == self.token:
            del os.environ[TOKEN_ENV]
        self.token = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_for_worker(output_dir: str | os.PathLike[str], report: Any = print) -> RunLock | None:
    """The lock a launched process (rank 0) holds for the life of its run, or None when its launcher
    holds it for it (torchrun on this host: the lock carries the token from this process's environment
    and its holder is alive here). A lock with that token whose holder is elsewhere or gone (the
    ``automodel run`` that submitted this Slurm job) is adopted: rewritten with this process as holder,
    so the submitting process's exit does not release it. Otherwise the lock is taken as usual."""
    lock = RunLock(output_dir, report=report)
    token, info = os.environ.get(TOKEN_ENV), lock.read()
    if not (token and info and info.get("token") == token):
        return lock.acquire()
    if info.get("host") == socket.gethostname() and _pid_alive(int(info.get("pid", -1))):
        return None
    lock.token = uuid.uuid4().hex
    tmp = lock.path.with_name(f"{LOCK_NAME}.{lock.token}")
    tmp.write_text(json.dumps(lock._record()))
    os.replace(tmp, lock.path)
    lock._start_heartbeat()
    os.environ[TOKEN_ENV] = lock.token
    return lock


def held_by_launcher(output_dir: str | os.PathLike[str]) -> bool:
    """Inside a launched process: whether the lock on ``output_dir`` is the one the launcher holds
    (its token is in this process's environment)."""
    token = os.environ.get(TOKEN_ENV)
    info = RunLock(output_dir).read()
    return bool(token and info and info.get("token") == token)
