"""Job mode: submit the run through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``)."""

from __future__ import annotations

import os
import time
from typing import Any

from automodel_ray.launcher import JOB_ENV, RayLaunchError


def submit(launcher: Any, job: Any) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = launcher._job_address()
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, or a RuntimeError naming the address
        raise RayLaunchError(f"launcher.job_address: cannot reach the Ray Jobs API at {address}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}\n"
                             "    -> the dashboard of the cluster serves it (ray start --head --dashboard-host ...; "
                             "port 8265 by default): set launcher.job_address=http://<head>:8265") from e
    env = launcher.runtime_env(job)
    env["env_vars"][JOB_ENV] = "1"
    _hand_over_lock(job.config["output_dir"])
    entrypoint = launcher.entrypoint(job)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env,
                               metadata={"automodel_output_dir": str(job.config["output_dir"])})
    print(f"submitted Ray job {job_id}: {launcher.summary()}", flush=True)
    print(f"  entrypoint: {entrypoint}\n  Jobs API:   {address}\n"
          f"  logs:   ray job logs --address {address} --follow {job_id}\n"
          f"  status: ray job status --address {address} {job_id}    stop: ray job stop --address {address} {job_id}",
          flush=True)
    if not launcher.wait:
        return 0
    _follow(client, job_id)
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
    info = client.get_job_info(job_id)
    print(f"Ray job {job_id} ended: {status.value}" + (f" ({info.message})" if info.message and status != JobStatus.SUCCEEDED else ""),
          flush=True)
    if status == JobStatus.SUCCEEDED:
        return 0
    code = getattr(info, "driver_exit_code", None)
    return int(code) if isinstance(code, int) and code else 1


def _hand_over_lock(output_dir: str) -> None:
    """The job's driver (``automodel run`` on the cluster) takes the output-dir lock for the life of the run:
    give back the one this process took, before the job can start (also while ``wait`` follows the job)."""
    from automodel.lock import TOKEN_ENV, RunLock

    token = os.environ.get(TOKEN_ENV)
    if token:
        lock = RunLock(output_dir)
        lock.token = token
        lock.release()


def _follow(client: Any, job_id: str) -> None:
    """Print the job's logs as they come, until the job ends (``ray job logs --follow``)."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
