"""What running through Slurm costs, on the single-node test cluster (root; starts it if needed).

    python tests/benchmarks/bench_slurm.py [--steps 6]

Side by side:

* cluster start: ``ci/start_slurm.sh`` when the cluster is up (idempotent check) and from stopped
  daemons (packages already installed);
* the same tiny 2-process training run (``automodel.testing`` config) through the ``local`` launcher
  (torchrun --standalone) and as a Slurm job, torchrun-per-node mode and one-srun-task-per-process mode:
  wall time from ``automodel run`` to the job's end, and the ratio to local;
* requeue latency of a trivial job: ``scontrol requeue`` (SIGTERM) and the USR1 self-requeue the
  launcher's script does, from the request to RUNNING again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from automodel.testing import make_config, run_cli, tiny_model
from automodel_slurm.slurm import FINAL_STATES
from automodel_slurm.slurm import job_info as info

REPO = Path(__file__).resolve().parents[2]
START = REPO / "automodel-plugins" / "automodel-slurm" / "ci" / "start_slurm.sh"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120).stdout


def wait(job_id: str, pred, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred(info(job_id)):
            return time.monotonic()
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} timed out: {info(job_id).get('JobState')}")


def timed_start(stop_first: bool) -> float:
    if stop_first:
        sh("bash", str(START), "stop")
    t0 = time.monotonic()
    sh("bash", str(START))
    return time.monotonic() - t0


def training_runs(root: Path, steps: int) -> dict[str, float]:
    model = tiny_model(root)
    sched = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": steps, "log_every_steps": 1}
    out: dict[str, float] = {}
    for name, launcher in [
        ("local (torchrun --standalone, 2 procs)", {"name": "local", "nproc_per_node": 2}),
        ("slurm, torchrun per node (1 x 2)", {"name": "slurm", "nproc_per_node": 2}),
        ("slurm, srun task per process (1 x 2)", {"name": "slurm", "ntasks_per_node": 2}),
    ]:
        tag = name.split()[0] + str(len(out))
        cfg = make_config(root, model, name=f"{tag}.yaml", step_scheduler=sched)
        data = yaml.safe_load(cfg.read_text())
        data["output_dir"], data["launcher"] = str(root / tag), launcher
        cfg.write_text(yaml.safe_dump(data))
        t0 = time.monotonic()
        proc = run_cli("run", cfg, cwd=root)
        if launcher["name"] == "slurm":
            job_id = proc.stdout.split("submitted Slurm job ")[1].split()[0]
            end = wait(job_id, lambda i: i["JobState"] in FINAL_STATES)
            assert info(job_id)["JobState"] == "COMPLETED", info(job_id)
        else:
            end = time.monotonic()
        out[name] = end - t0
    return out


def requeue_latency(root: Path, how: str) -> float:
    script = root / f"sleep_{how}.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --requeue --open-mode=append --output=" + str(root / "sleep-%j.out") + "\n"
        "trap 'scontrol requeue $SLURM_JOB_ID; exit 0' USR1\n"
        "sleep 300 & wait $!\n"
    )
    job_id = sh("sbatch", "--parsable", str(script)).strip()
    wait(job_id, lambda i: i["JobState"] == "RUNNING")
    time.sleep(1)
    t0 = time.monotonic()
    if how == "scontrol":
        sh("scontrol", "requeue", job_id)
    else:
        sh("scancel", "--signal=USR1", "--batch", job_id)
    end = wait(job_id, lambda i: i["Restarts"] == "1" and i["JobState"] == "RUNNING")
    sh("scancel", job_id)
    return end - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    print(f"{'cluster start':<45} {'seconds':>8}")
    warm = timed_start(stop_first=False)
    cold = timed_start(stop_first=True)
    print(f"{'  already up (idempotent check)':<45} {warm:8.2f}")
    print(f"{'  from stopped daemons':<45} {cold:8.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = training_runs(root, args.steps)
        base = next(iter(runs.values()))
        print(f"\n{f'{args.steps}-step tiny run, 2 processes':<45} {'seconds':>8} {'vs local':>9}")
        for name, secs in runs.items():
            print(f"  {name:<43} {secs:8.1f} {secs / base:8.2f}x")
        print(f"\n{'requeue latency (request -> RUNNING again)':<45} {'seconds':>8}")
        for how in ("scontrol", "usr1"):
            label = "scontrol requeue" if how == "scontrol" else "USR1 -> self scontrol requeue"
            print(f"  {label:<43} {requeue_latency(root, how):8.1f}")
    print(f"\n(python {sys.version.split()[0]}; times include torch start-up; the machine's 2 cores are shared)")


if __name__ == "__main__":
    main()
