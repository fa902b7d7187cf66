"""Preemption and Ctrl-C: SIGTERM / SIGUSR1 / the first SIGINT -> finish the step -> checkpoint -> exit
with the requeue code; a second SIGINT (Ctrl-C again) aborts at once without a checkpoint.

The protocol launchers and schedulers (Slurm) rely on:

1. A signal handler only sets a flag (:class:`StopFlag`); nothing unsafe runs inside it.
2. At every step boundary all ranks agree with one all-reduce (a signal reaches ranks at different times),
   save a checkpoint together, and the main rank writes ``<output_dir>/preempted.json``.
3. Every training process exits with :data:`automodel.launch.REQUEUE_EXIT_CODE` (75) by raising
   :class:`Preempted` (a ``SystemExit``); the ``local`` launcher maps torchrun's own exit code to 75
   too (:func:`run_torchrun`). The next run with ``checkpoint.resume: auto`` continues where it stopped.
4. Ctrl-C (SIGINT) is a stop signal the first time; the second raises ``KeyboardInterrupt`` (exit 130,
   no checkpoint) and any further one kills the process outright. Under the ``local`` launcher's torchrun
   the workers run in their own sessions (the terminal's Ctrl-C never reaches them): ``automodel run``
   forwards each SIGINT to them, and torchrun itself ignores SIGINT (:mod:`automodel._torchrun`).

No torch import at module level.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from automodel.launch import REQUEUE_EXIT_CODE

#: The signals that ask a run to checkpoint and stop (Slurm sends SIGTERM on preemption/cancel and can
#: send SIGUSR1 ahead of the time limit with ``--signal=USR1@<seconds>``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

#: Ctrl-C: a stop signal the first time, an abort the second (see :class:`StopFlag`).
INTERRUPT = signal.SIGINT

#: Written by the main rank next to metrics.jsonl when a run stopped for a signal after checkpointing.
MARKER = "preempted.json"


class Preempted(SystemExit):
    """Raised by the training loop after the stop checkpoint: exits the process with code 75."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(REQUEUE_EXIT_CODE)
        self.message = message
        self.step = step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


def _say(message: str) -> None:
    """Write to stderr from a signal handler (``os.write``: no buffered-IO reentrancy with a print the
    handler interrupted)."""
    try:
        os.write(2, message.encode())
    except OSError:
        pass


class StopFlag:
    """Installs handlers for :data:`STOP_SIGNALS` and SIGINT that record the signal; :meth:`agreed` is the
    collective check. A second SIGINT raises ``KeyboardInterrupt`` (abort now); a third kills the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.interrupts = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> StopFlag:
        for sig in (*STOP_SIGNALS, INTERRUPT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the caller owns signals
                pass
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == INTERRUPT:
            self.interrupts += 1
            main = os.environ.get("RANK", "0") == "0"
            if self.interrupts > 1:
                signal.signal(INTERRUPT, signal.SIG_DFL)  # a third Ctrl-C kills, even inside native code
                if main:
                    _say("\nCtrl-C again: aborting now, without a checkpoint\n")
                raise KeyboardInterrupt
            if main:
                _say("\nCtrl-C: stopping after this step with a checkpoint (exit 75; resume with "
                     "checkpoint.resume=auto); press Ctrl-C again to abort now without one\n")
        if self.signum is None or signum != INTERRUPT:
            self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    def agreed(self, device: Any, distributed: bool) -> bool:
        """True on every rank when any rank got a stop signal (one all-reduce when distributed)."""
        if not distributed:
            return self.signum is not None
        import torch

        from automodel import runtime

        flag = runtime.all_reduce(torch.tensor([self.signum or 0], dtype=torch.int32, device=device), "max")
        if self.signum is None and int(flag):
            self.signum = int(flag)
        return bool(int(flag))


def write_marker(output_dir: str | os.PathLike[str], info: dict[str, Any]) -> None:
    path = Path(output_dir) / MARKER
    path.write_text(json.dumps({**info, "exit_code": REQUEUE_EXIT_CODE}) + "\n")


def clear_marker(output_dir: str | os.PathLike[str]) -> None:
    (Path(output_dir) / MARKER).unlink(missing_ok=True)


def read_marker(output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a preempted run recorded (step, checkpoint, signal), or None if the last run was not preempted."""
    path = Path(output_dir) / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def torchrun_command(args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ARGS`` through :mod:`automodel._torchrun`: shielded from SIGUSR1
    (see :func:`run_torchrun`), and a failed worker's exit code instead of torchrun's error report."""
    return [sys.executable, "-m", "automodel._torchrun", *args]


def run_torchrun(cmd: list[str], env: dict[str, str], output_dir: str | os.PathLike[str]) -> int:
    """Run torchrun (``cmd``) and return the exit code ``automodel run`` should exit with.

    SIGTERM / SIGUSR1 / SIGINT received by this process are forwarded to the training processes (torchrun's
    children, in sessions of their own: a terminal's Ctrl-C reaches only this process and torchrun, which
    ignores it), which checkpoint and exit 75 (a second SIGINT: they abort; a third: they are killed). A
    failed worker's exit code comes back as is; whenever the workers left the preemption marker, the result
    is :data:`REQUEUE_EXIT_CODE`.
    """
    clear_marker(output_dir)
    proc = subprocess.Popen(cmd, env=env)
    interrupts = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        if signum == INTERRUPT:
            interrupts += 1
            if interrupts >= 3:  # the workers did not abort on the second: kill them
                signum = signal.SIGKILL
        workers = _children(proc.pid)
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {}
    for sig in (*STOP_SIGNALS, INTERRUPT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:
            pass
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code != 0 and read_marker(output_dir) is not None:
        print(f"training stopped for preemption; exit code {REQUEUE_EXIT_CODE} (requeue)", flush=True)
        return REQUEUE_EXIT_CODE
    return code
