"""The ``ray`` launcher: train on a Ray cluster with Ray Train's ``TorchTrainer``.

Attached (default): ``automodel run`` connects to the cluster (or starts a Ray instance in this process),
checks that the workers fit, and runs ``TorchTrainer.fit()``: ``num_workers`` Ray Train workers, placed by
a placement group (``placement_strategy``), each run :func:`automodel_ray.worker.train_loop`; their output
(rank 0's progress lines) streams to this terminal. A worker that dies makes Ray Train restart the whole
worker group, up to ``max_failures`` times; with ``checkpoint.resume: auto`` the restarted group resumes
from the newest checkpoint. SIGTERM / SIGUSR1 / Ctrl-C here: the workers checkpoint and stop, exit 75.

Job mode (``job: true``): the same run is submitted through the Ray Jobs API as the entrypoint
``python -m automodel run <config.yaml> launcher.job=false launcher.address=auto``; ``automodel run``
prints the job id and returns (``wait: true``: follows the job's logs until it ends).

The ``launcher:`` section is this class's signature (the core checks keys and types), plus
:meth:`RayLauncher.validate_args`. Importing this module imports no ray: it is imported lazily.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from automodel.errors import AutomodelError

from automodel_ray import __version__

Strategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESOURCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
#: Set in the runtime env of a job mode submission: the entrypoint runs inside a Ray job.
JOB_ENV = "AUTOMODEL_RAY_JOB"
#: Resource names that have keys of their own.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class RayLaunchError(AutomodelError):
    """A problem found before (or instead of) submitting: unreachable cluster, resources that do not fit."""


@dataclass(eq=False)
class RayLauncher:
    """Train on a Ray cluster through Ray Train (``TorchTrainer``).

    Args:
        address: which cluster. ``local`` (default): start a Ray instance inside ``automodel run`` (a laptop
            cluster, gone when the run ends); ``auto``: ``$RAY_ADDRESS`` or the cluster ``ray start`` runs on
            this machine; ``host:port``: a cluster's GCS address; ``ray://host:10001``: through Ray Client.
        num_workers: training processes (Ray Train workers); the world size. Unset: ``nproc_per_node``, else 1.
        nproc_per_node: the ``local`` launcher's key, accepted so that ``launcher.name=ray`` works on a config
            written for ``local`` (``{name: local, nproc_per_node: 2}`` -> 2 workers).
        cpus_per_worker: logical CPUs each worker reserves.
        gpus_per_worker: GPUs each worker reserves (0: train on CPU with gloo; > 0: nccl).
        resources_per_worker: custom resources each worker reserves, e.g. ``{accelerator_type:H100: 0.001}``.
        placement_strategy: how the placement group spreads the workers over nodes (Ray's strategies).
        max_failures: how many times a failed worker group is restarted (each restart resumes from the newest
            checkpoint); 0: the first failure ends the run.
        env: environment variables for every worker (runtime environment ``env_vars``).
        working_dir: a local directory Ray uploads to every node and runs the workers in (runtime environment
            ``working_dir``); unset: workers use this process's working directory, which must exist there.
        job: submit through the Ray Jobs API (detached) instead of running attached; prints the job id.
        job_address: the Jobs API (dashboard) address, ``http://host:8265``; unset: ``$RAY_API_SERVER_ADDRESS``,
            else ``$RAY_ADDRESS`` when it is an http(s) URL, else ``http://127.0.0.1:8265``.
        wait: job mode: follow the job's logs until it ends and exit with its result.
        connect_timeout_s: how long to wait for the cluster to answer before giving up.
        image: the container image of the KubeRay ``RayJob`` manifest ``--dry-run`` renders.
    """

    address: str = "local"
    num_workers: int | None = None
    nproc_per_node: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: Strategy = "PACK"
    max_failures: int = 0
    env: dict[str, str] | None = None
    working_dir: str | None = None
    job: bool = False
    job_address: str | None = None
    wait: bool = False
    connect_timeout_s: float = 30.0
    image: str = "rayproject/ray:2.60.0-py311-cpu"

    def __post_init__(self) -> None:
        problems = self.validate_args(asdict(self))
        if problems:
            key, message, hint = problems[0]
            raise RayLaunchError(f"launcher.{key}: {message}" + (f"\n    -> {hint}" if hint else ""))
        self.num_workers = self.num_workers or self.nproc_per_node or 1

    @property
    def world_size(self) -> int:
        return self.num_workers

    # ------------------------------------------------------------------------------------------------
    # what is submitted

    def worker_resources(self) -> dict[str, float]:
        res = {"CPU": float(self.cpus_per_worker), **{k: float(v) for k, v in (self.resources_per_worker or {}).items()}}
        if self.gpus_per_worker:
            res["GPU"] = float(self.gpus_per_worker)
        return res

    def runtime_env(self, job: Any) -> dict[str, Any]:
        """The runtime environment of the workers (and of the job's driver in job mode)."""
        # no AUTOMODEL_LAUNCHED here: a job's driver (job mode) gets this env too and must launch; the
        # workers set it themselves. Ray Train's print patch would print every line twice (and dill's capture)
        env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **{k: str(v) for k, v in (self.env or {}).items()}}
        if not self.working_dir:  # local plugin modules are importable from where the user launched
            env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
        out: dict[str, Any] = {"env_vars": env}
        if self.working_dir:
            out["working_dir"] = str(Path(self.working_dir).expanduser().resolve())
        return out

    def entrypoint(self, job: Any) -> str:
        """The Ray Jobs entrypoint: the same run, attached, from a driver on the cluster."""
        cmd = ["python", *job.worker_command(), "launcher.job=false", "launcher.address=auto"]
        if self.wait:  # only meaningful to the submitting side
            cmd.append("launcher.wait=false")
        return shlex.join(cmd)

    def _job_address(self) -> str:
        if self.job_address:
            return self.job_address
        if os.environ.get("RAY_API_SERVER_ADDRESS"):
            return os.environ["RAY_API_SERVER_ADDRESS"]
        ra = os.environ.get("RAY_ADDRESS", "")
        return ra if ra.startswith(("http://", "https://")) else "http://127.0.0.1:8265"

    def summary(self) -> str:
        res = ", ".join(f"{k}={v:g}" for k, v in self.worker_resources().items())
        return (f"{self.num_workers} worker(s) x {{{res}}}, placement {self.placement_strategy}, "
                f"max_failures={self.max_failures}")

    def preview(self, job: Any) -> None:
        """``automodel run --dry-run``: what would be submitted, and a KubeRay RayJob manifest; starts nothing."""
        from automodel_ray.kuberay import render_rayjob

        env = self.runtime_env(job)
        print(f"dry run: would run on Ray ({'Ray Jobs API at ' + self._job_address() if self.job else 'attached'}, "
              f"address {self.address})", flush=True)
        print(f"  workers:     {self.summary()}")
        print(f"  entrypoint:  {self.entrypoint(job)}" + ("" if self.job else "   (job mode; attached runs Ray Train "
                                                             "TorchTrainer from this process)"))
        print("  runtime env: " + ", ".join(f"{k}={v!r}" for k, v in env.items()))
        print("# KubeRay RayJob manifest (kubectl apply -f <file>; the config and output_dir must be on storage "
              "every pod mounts):")
        print(render_rayjob(self, job), end="", flush=True)

    # ------------------------------------------------------------------------------------------------
    # launch

    def launch(self, job: Any) -> int:
        if self.job:
            return self._submit_job(job)
        return self._run_attached(job)

    def _run_attached(self, job: Any) -> int:
        from automodel.signals import clear_marker, read_marker

        t0 = time.monotonic()
        ray = self._connect(job)
        try:
            self._check_resources(ray)
            from ray.train import FailureConfig, RunConfig, ScalingConfig
            from ray.train.torch import TorchConfig, TorchTrainer

            from automodel_ray.worker import Coordinator, train_loop

            coordinator = Coordinator.remote()
            out = Path(job.config["output_dir"]).resolve()
            clear_marker(out)  # an earlier run's: "stopped for a signal" must be this run's
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={
                    "config": job.config, "plugin_modules": list(job.plugin_modules), "coordinator": coordinator,
                    "cwd": os.getcwd(), "working_dir": self.working_dir, "max_failures": self.max_failures, "poll_s": 1.0,
                },
                torch_config=TorchConfig(backend="nccl" if self.gpus_per_worker else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=self.num_workers, use_gpu=bool(self.gpus_per_worker),
                    resources_per_worker=self.worker_resources(), placement_strategy=self.placement_strategy,
                ),
                run_config=RunConfig(name=f"automodel-{out.name}", storage_path=str(out / "ray"),
                                     failure_config=FailureConfig(max_failures=self.max_failures)),
            )
            print(f"ray: starting {self.summary()} (connected in {time.monotonic() - t0:.1f} s)", flush=True)
            with _ForwardStops(coordinator):
                try:
                    trainer.fit()
                except Exception as e:  # the worker group failed more than max_failures times
                    state = ray.get(coordinator.state.remote())
                    if state["errors"]:
                        return self._report_errors(state["errors"])
                    raise RayLaunchError(f"the Ray Train run failed after {state['attempts']} attempt(s) "
                                         f"(launcher.max_failures={self.max_failures}): {_root_cause(e)}\n"
                                         "    -> a dead worker process (OOM, a lost node) restarts the worker group from the newest "
                                         "checkpoint when launcher.max_failures > 0; Ray's lines above name the worker") from e
            state = ray.get(coordinator.state.remote())
            if state["errors"]:
                return self._report_errors(state["errors"])
            if read_marker(out) is not None:
                from automodel.launch import REQUEUE_EXIT_CODE

                print(f"training stopped on {state['stop'] or 'a signal'} with a checkpoint; exit code "
                      f"{REQUEUE_EXIT_CODE} (resume with checkpoint.resume=auto)", flush=True)
                return REQUEUE_EXIT_CODE
            restarts = max(state["attempts"] - 1, 0)
            print(f"ray: finished in {time.monotonic() - t0:.1f} s"
                  + (f" after {restarts} worker-group restart(s)" if restarts else ""), flush=True)
            return 0
        finally:
            ray.shutdown()

    @staticmethod
    def _report_errors(errors: list[dict[str, Any]]) -> int:
        first = min(errors, key=lambda e: e["rank"])
        print(f"error: {first['message']}\n(rank {first['rank']} of the Ray worker group; not retried: a "
              "configuration or data problem)", file=sys.stderr, flush=True)
        return int(first["exit_code"])

    # ------------------------------------------------------------------------------------------------
    # checks before anything is submitted

    def _connect(self, job: Any) -> Any:
        """``ray.init`` with the workers' runtime environment; an unreachable address is a clear error."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
        import ray

        kwargs: dict[str, Any] = {"logging_level": "WARNING", "configure_logging": True}
        if os.environ.get(JOB_ENV) != "1":  # a job's driver: the job's runtime env (the same) applies already
            kwargs["runtime_env"] = self.runtime_env(job)
        address = self.address
        if address == "local":
            need = self.num_workers * float(self.cpus_per_worker)
            return _init(ray, None, num_cpus=max(int(-(-need // 1)), 1), num_gpus=None, include_dashboard=False,
                         **kwargs)
        if address == "auto":
            env = os.environ.get("RAY_ADDRESS")
            if env and not env.startswith(("http://", "https://")):
                address = env
        if address != "auto":
            _probe(address, self.connect_timeout_s)
        try:
            return _init(ray, address, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise RayLaunchError(
                f"launcher.address: cannot connect to a Ray cluster at '{self.address}': {str(e).splitlines()[0]}\n"
                "    -> start one (ray start --head), point launcher.address at its GCS address (host:6379) "
                "or ray://host:10001, or use launcher.address=local") from e

    def _check_resources(self, ray: Any) -> None:
        total = ray.cluster_resources()
        need = self.worker_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        have = ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU") or k in need)
        if need.get("GPU") and not total.get("GPU"):
            raise RayLaunchError(
                f"launcher.gpus_per_worker: {need['GPU']:g} GPU(s) per worker requested, but the Ray cluster at "
                f"'{self.address}' has no GPUs ({len(nodes)} node(s): {have})\n"
                "    -> set launcher.gpus_per_worker=0 to train on CPU, or connect to a cluster with GPU nodes")
        for key, per in need.items():
            if total.get(key, 0) + 1e-9 < per * self.num_workers:
                raise RayLaunchError(
                    f"launcher.num_workers: {self.num_workers} worker(s) x {per:g} {key} need "
                    f"{per * self.num_workers:g} {key}, but the Ray cluster has {total.get(key, 0):g} "
                    f"({len(nodes)} node(s): {have})\n"
                    f"    -> lower launcher.num_workers or the per-worker resources, or add nodes to the cluster")
        per_node = [n.get("Resources", {}) for n in nodes]
        fit = sum(min(int(r.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0) for r in per_node)
        if fit < self.num_workers:
            raise RayLaunchError(
                f"launcher.num_workers: {self.num_workers} worker(s) of {{{', '.join(f'{k}={v:g}' for k, v in need.items())}}} "
                f"do not fit on the cluster's nodes (at most {fit} do: a worker cannot span nodes)\n"
                "    -> lower the per-worker resources or launcher.num_workers")
        if self.placement_strategy == "STRICT_PACK":
            best = max((min(int(r.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0) for r in per_node), default=0)
            if best < self.num_workers:
                raise RayLaunchError(f"launcher.placement_strategy: STRICT_PACK puts all {self.num_workers} workers on "
                                     f"one node, but the largest node holds {best}\n    -> use PACK or SPREAD")
        if self.placement_strategy == "STRICT_SPREAD" and len(nodes) < self.num_workers:
            raise RayLaunchError(f"launcher.placement_strategy: STRICT_SPREAD needs one node per worker "
                                 f"({self.num_workers}), the cluster has {len(nodes)}\n    -> use SPREAD or PACK")

    # ------------------------------------------------------------------------------------------------
    # job mode

    def _submit_job(self, job: Any) -> int:
        from automodel_ray.jobs import submit

        return submit(self, job)

    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Checks beyond types, run by ``automodel validate`` / ``run`` before anything connects or starts."""
        problems: list[tuple[str, str, str]] = []
        for key in ("num_workers", "nproc_per_node"):
            n = args.get(key)
            if isinstance(n, int) and n < 1:
                problems.append((key, f"must be >= 1, got {n}", ""))
        n, p = args.get("num_workers"), args.get("nproc_per_node")
        if isinstance(n, int) and isinstance(p, int) and n != p:
            problems.append(("num_workers", f"num_workers ({n}) and nproc_per_node ({p}, the local launcher's key) disagree",
                             "give one of them"))
        for key in ("cpus_per_worker", "gpus_per_worker"):
            v = args.get(key)
            if isinstance(v, (int, float)) and v < 0:
                problems.append((key, f"must be >= 0, got {v}", ""))
        if args.get("cpus_per_worker") == 0 and not args.get("gpus_per_worker") and not args.get("resources_per_worker"):
            problems.append(("cpus_per_worker", "a worker that reserves nothing can be placed anywhere, any number of times",
                             "reserve at least some CPU (cpus_per_worker: 1)"))
        gpus = args.get("gpus_per_worker")
        if isinstance(gpus, float) and gpus > 1 and not gpus.is_integer():
            problems.append(("gpus_per_worker", f"{gpus} GPUs: more than one GPU per worker must be a whole number", ""))
        for key, value in (args.get("resources_per_worker") or {}).items():
            if key in _BUILTIN_RESOURCES:
                problems.append((f"resources_per_worker.{key}", f"{key} has a key of its own",
                                 "use cpus_per_worker / gpus_per_worker" if key in ("CPU", "GPU") else ""))
            elif not _RESOURCE.match(str(key)):
                problems.append((f"resources_per_worker.{key}", "not a valid Ray resource name", ""))
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append((f"resources_per_worker.{key}", f"expected a number >= 0, got {value!r}", ""))
        m = args.get("max_failures", 0)
        if isinstance(m, int) and m < -1:
            problems.append(("max_failures", f"must be >= 0 (or -1: no limit), got {m}", ""))
        for key, value in (args.get("env") or {}).items():
            if not _ENV_KEY.match(str(key)):
                problems.append((f"env.{key}", "not a valid environment variable name", ""))
            elif not isinstance(value, (str, int, float, bool)):
                problems.append((f"env.{key}", f"expected a string or number, got {type(value).__name__}", ""))
        wd = args.get("working_dir")
        if isinstance(wd, str) and not Path(wd).expanduser().is_dir():
            problems.append(("working_dir", f"'{wd}' is not a directory", "give a local directory Ray uploads to the nodes"))
        address = args.get("address", "local")
        if isinstance(address, str) and address not in ("local", "auto") and not _parse_address(address):
            problems.append(("address", f"'{address}' is not a Ray cluster address",
                             "use local, auto, host:port (the GCS address, e.g. 10.0.0.1:6379) or ray://host:10001"))
        ja = args.get("job_address")
        if isinstance(ja, str) and not ja.startswith(("http://", "https://")):
            problems.append(("job_address", f"'{ja}' is not an http(s) URL", "e.g. http://127.0.0.1:8265 (the dashboard)"))
        if args.get("job") and address == "local":
            problems.append(("job", "job mode submits to a running cluster; address 'local' starts none",
                             "set launcher.address=auto (or the cluster's address) and launcher.job_address"))
        if args.get("wait") and not args.get("job"):
            problems.append(("wait", "wait applies to job mode (launcher.job=true); attached runs always wait", ""))
        t = args.get("connect_timeout_s", 30.0)
        if isinstance(t, (int, float)) and t <= 0:
            problems.append(("connect_timeout_s", f"must be > 0, got {t}", ""))
        return problems


# ----------------------------------------------------------------------------------------------------


def _parse_address(address: str) -> tuple[str, int] | None:
    m = re.match(r"^(?:ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$", address)
    if not m or not 0 < int(m.group(2)) < 65536:
        return None
    return m.group(1).strip("[]"), int(m.group(2))


def _probe(address: str, timeout: float) -> None:
    """A TCP connect to the address: an unreachable cluster fails here in seconds, with the reason, instead
    of inside ``ray.init``'s retries."""
    parsed = _parse_address(address)
    if parsed is None:
        raise RayLaunchError(f"launcher.address: '{address}' is not a Ray cluster address\n"
                             "    -> use local, auto, host:port (GCS) or ray://host:10001")
    host, port = parsed
    t0 = time.monotonic()
    deadline = t0 + min(timeout, 10.0)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.5)):
                return
        except OSError as e:
            last = e
            if isinstance(e, ConnectionRefusedError) and time.monotonic() - t0 > 2:  # nothing listens there
                break
            time.sleep(0.5)
    raise RayLaunchError(
        f"launcher.address: cannot reach the Ray cluster at '{address}' ({last or 'timed out'})\n"
        "    -> is it running (`ray status --address=" + f"{host}:{port}`)? Start one with `ray start --head "
        "--port=6379`, fix launcher.address, or use launcher.address=local for a Ray instance in this process")


def _init(ray: Any, address: str | None, **kwargs: Any) -> Any:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=address, **kwargs)
    return ray


def _root_cause(e: BaseException) -> str:
    """The first line of the innermost worker error Ray wraps (a process killed, an exception)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        failures = getattr(cur, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            cur = next(iter(failures.values()))
            continue
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
    text = str(cur or e).strip().splitlines()
    return f"{type(cur or e).__name__}: {text[0] if text else ''}"


class _ForwardStops:
    """While attached: SIGTERM / SIGUSR1 / SIGINT here ask the workers (through the coordinator) to stop at
    the next step with a checkpoint; a second Ctrl-C aborts (KeyboardInterrupt: Ray tears the workers down)."""

    def __init__(self, coordinator: Any):
        self.coordinator = coordinator
        self.event = threading.Event()
        self.signame = "SIGTERM"
        self.interrupts = 0
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt
            os.write(2, b"\nCtrl-C: the workers stop after this step with a checkpoint (exit 75); "
                        b"Ctrl-C again aborts without one\n")
        self.signame = signal.Signals(signum).name
        self.event.set()

    def _forward(self) -> None:
        while not self.event.wait(0.2):
            pass
        import ray

        try:
            ray.get(self.coordinator.request_stop.remote(self.signame), timeout=30)
        except Exception:
            pass

    def __enter__(self) -> _ForwardStops:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        threading.Thread(target=self._forward, daemon=True, name="automodel-stop-forward").start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


__all__ = ["RayLauncher", "RayLaunchError", "__version__"]
