"""The ``local`` launcher: train in this process, or under torchrun for several processes."""

from __future__ import annotations

from typing import Any


class LocalLauncher:
    """Run on this machine. One process trains in-process; more are started with torchrun
    (``--standalone``), each running ``automodel run`` on the saved resolved config."""

    def __init__(self, nproc_per_node: int = 1):
        self.nproc_per_node = nproc_per_node
        self.world_size = nproc_per_node

    def _torchrun_args(self, job: Any) -> list[str]:
        return ["--standalone", f"--nproc_per_node={self.nproc_per_node}", *job.worker_command()]

    def preview(self, job: Any) -> None:
        """``automodel run --dry-run``: say what would start, start nothing."""
        if self.nproc_per_node == 1:
            print(f"dry run: would train in this process on {job.config_path}", flush=True)
        else:
            print(f"dry run: would start {self.nproc_per_node} processes: torchrun {' '.join(self._torchrun_args(job))}", flush=True)

    def launch(self, job: Any) -> int:
        args = self._torchrun_args(job)
        if self.nproc_per_node == 1:
            from automodel.train import train

            train(job.run if job.run is not None else job.config, job.plugins)
            return 0
        from automodel.signals import run_torchrun, torchrun_command

        print(f"launching {self.nproc_per_node} processes: torch.distributed.run {' '.join(args)}", flush=True)
        # forwards SIGTERM/SIGUSR1 to the workers; exit code 75 when they stopped for preemption
        return run_torchrun(torchrun_command(args), job.worker_env(), job.config["output_dir"])

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        n = args.get("nproc_per_node", 1)
        if isinstance(n, int) and n < 1:
            return [("nproc_per_node", f"must be >= 1, got {n}", "")]
        return []
