"""What runs inside each Ray Train worker, and the small actor the driver and the workers share.

Each worker runs :func:`train_loop` (Ray Train's ``train_loop_per_worker``): the same in-process training
loop the ``local`` launcher runs under torchrun, in a process group Ray Train already started
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, gloo on CPU, nccl on GPU). A restarted worker group (after a
worker died) runs it again; with ``checkpoint.resume: auto`` the loop resumes from the newest checkpoint.

:class:`Coordinator` (one Ray actor, no CPU) carries what the driver and the workers need to share:

* a stop request: the driver got SIGTERM / SIGUSR1 / Ctrl-C. Ray runs the training loop outside the
  worker's main thread, so no signal reaches it; a watcher thread polls the coordinator and sets the
  loop's :class:`automodel.signals.StopFlag`, and the loop stops the way it does under the other
  launchers (all ranks agree at a step boundary, checkpoint, ``preempted.json``);
* the attempt number (1 + restarts so far), printed by rank 0 when a restarted group resumes;
* a user error (:class:`automodel.errors.AutomodelError`: a bad record, a failing plugin), which is not
  retried: the worker reports it and returns, and ``automodel run`` prints it and exits with its code.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import ray


@ray.remote(num_cpus=0, max_restarts=-1)
class Coordinator:
    def __init__(self) -> None:
        self.stop: str | None = None
        self.attempts = 0
        self.errors: list[dict[str, Any]] = []

    def request_stop(self, signame: str) -> None:
        self.stop = self.stop or signame

    def stop_requested(self) -> str | None:
        return self.stop

    def started(self) -> int:
        self.attempts += 1
        return self.attempts

    def failed(self, rank: int, message: str, exit_code: int) -> None:
        self.errors.append({"rank": rank, "message": message, "exit_code": exit_code})

    def state(self) -> dict[str, Any]:
        return {"stop": self.stop, "attempts": self.attempts, "errors": list(self.errors)}


def _watch(coordinator: Any, stop_flag: Any, done: threading.Event, poll_s: float) -> None:
    """Set the loop's stop flag (as SIGTERM would) once the driver asked to stop."""
    while not done.wait(poll_s):
        try:
            name = ray.get(coordinator.stop_requested.remote(), timeout=10)
        except Exception:  # the driver is gone or busy: keep training, ask again
            continue
        if name:
            stop_flag.signum = int(getattr(signal, name, signal.SIGTERM))
            return


def _record_worker(output_dir: Path, rank: int, attempt: int) -> None:
    """``<output_dir>/ray/workers/rank-<r>.json``: which process on which node is which rank (for ops and
    for the failure test, which kills one)."""
    ctx = ray.get_runtime_context()
    info = {"rank": rank, "pid": os.getpid(), "node_id": ctx.get_node_id(), "attempt": attempt, "time": time.time()}
    path = output_dir / "ray" / "workers" / f"rank-{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(path)


def train_loop(args: dict[str, Any]) -> None:
    """One rank of the run: validate the resolved config for this world size, build, train."""
    from automodel import config as config_mod
    from automodel.errors import AutomodelError
    from automodel.launch import LAUNCHED_ENV
    from automodel.plugins import load_plugins
    from automodel.signals import Preempted
    from automodel.train import Trainer

    os.environ[LAUNCHED_ENV] = "1"
    if not args.get("working_dir") and args.get("cwd") and Path(args["cwd"]).is_dir():
        os.chdir(args["cwd"])  # relative paths in the config mean what they meant where `automodel run` ran
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    coordinator, cfg = args["coordinator"], args["config"]
    attempt = ray.get(coordinator.started.remote()) if rank == 0 else 0
    if rank == 0 and attempt > 1:
        print(f"ray: worker group restarted (attempt {attempt}, restart {attempt - 1} of launcher.max_failures="
              f"{args['max_failures']}); resuming from the newest checkpoint", flush=True)
    _record_worker(Path(cfg["output_dir"]).resolve(), rank, attempt)
    done = threading.Event()
    try:
        plugins = load_plugins(list(args["plugin_modules"]) + [m for m in cfg.get("plugins") or [] if isinstance(m, str)])
        validated = config_mod.validate(cfg, plugins, world_size=world_size, run_targets=True)
        trainer = Trainer(validated)
        threading.Thread(target=_watch, args=(coordinator, trainer.stop, done, args["poll_s"]), daemon=True,
                         name="automodel-stop-watch").start()
        trainer.run()
    except Preempted:  # stopped on the driver's request with a checkpoint: a clean end for Ray
        return
    except AutomodelError as e:  # the user's to fix: reported, not retried
        ray.get(coordinator.failed.remote(rank, str(e), e.exit_code))
        return
    finally:
        done.set()
