"""Job mode: submit the run through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``)."""

from __future__ import annotations

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
    for line in _follow(client, job_id):
        print(line, end="", flush=True)
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
    info = client.get_job_info(job_id)
    print(f"Ray job {job_id} ended: {status.value}" + (f" ({info.message})" if info.message and status != JobStatus.SUCCEEDED else ""),
          flush=True)
    if status == JobStatus.SUCCEEDED:
        return 0
    code = getattr(info, "driver_exit_code", None)
    return int(code) if isinstance(code, int) and code else 1


def _follow(client: Any, job_id: str) -> Any:
    import asyncio

    async def lines() -> list[str]:
        out = []
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)
        return out

    asyncio.run(lines())
    return []
