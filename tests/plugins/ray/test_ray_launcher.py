"""automodel-ray against a REAL two-node Ray cluster (``ray start`` head + one more node on 127.0.0.1).

* cheap: registration, lazy import, launcher keys checked before anything connects, the KubeRay manifest;
* bad input caught before submitting (exit 2): unreachable address, more workers than the cluster's CPUs,
  a GPU asked of a CPU cluster;
* a 2-worker fsdp2 run, attached, rank 0's lines streamed; ``kill -9`` of one worker mid-run -> Ray Train
  restarts the worker group -> it resumes from the newest checkpoint -> the losses equal, bit for bit, an
  uninterrupted ``local`` launcher run (torchrun, 2 processes) of the same config;
* SIGTERM to ``automodel run`` -> the workers checkpoint and stop, exit 75, ``preempted.json``;
* job mode: submitted through the Ray Jobs API, the job id printed, the job trains to the same losses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from automodel.testing import make_config, read_metrics, run_cli

STEPS = 8
SCHED = {"global_batch_size": 8, "local_batch_size": 2, "max_steps": STEPS, "log_every_steps": 1, "ckpt_every_steps": 2}
CHECKPOINT = {"export_hf": False, "save_final": False, "keep_last": None}

# A local plugin that makes each step last a little, so a kill or a signal lands mid-training (sleep: no CPU).
SLOW_PLUGIN = '''
import os, time
from automodel.hookspecs import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    time.sleep(float(os.environ.get("SLOW_STEP_S", "1.0")))
'''


def cfg_file(root: Path, model: Path, name: str, launcher: dict[str, Any], **sections: Any) -> Path:
    cfg = make_config(root, model, name=f"{name}.yaml", step_scheduler=SCHED, parallel=[{"name": "fsdp2"}],
                      checkpoint=CHECKPOINT, **sections)
    data = yaml.safe_load(cfg.read_text())
    data["output_dir"] = str(root / name)
    data["launcher"] = launcher
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def ray_launcher(cluster: dict[str, str], **kw: Any) -> dict[str, Any]:
    return {"name": "ray", "address": cluster["address"], "num_workers": 2, **kw}


def losses(output_dir: Path) -> dict[int, float]:
    records = read_metrics(output_dir)
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records}


def logged_steps(output_dir: Path) -> int:
    metrics = output_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    tail = log.read_text()[-4000:] if log is not None and log.is_file() else ""
    pytest.fail(f"timed out / ended waiting for {what}\n{tail}")


def start(cfg: Path, cwd: Path, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SLOW_STEP_S": "1.0"}
    env.pop("AUTOMODEL_LAUNCHED", None)
    return subprocess.Popen([sys.executable, "-m", "automodel", "run", str(cfg)], cwd=cwd, env=env, text=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[int, float]:
    """The uninterrupted run: the same config under the ``local`` launcher (torchrun, 2 processes)."""
    root = tmp_path_factory.mktemp("ray_ref")
    cfg = cfg_file(root, tiny_model_dir, "ref", {"name": "local", "nproc_per_node": 2})
    run_cli("run", cfg, cwd=root)
    got = losses(root / "ref")
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


# --------------------------------------------------------------------------------------------------
# cheap: no cluster
# --------------------------------------------------------------------------------------------------


def test_ray_plugin_registered_and_import_is_lazy() -> None:
    out = run_cli("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["ray"]["distribution"] == "automodel-ray"
    assert plugins["ray"]["registers"] == {"launchers": ["ray"]}
    code = "import sys, automodel_ray, automodel_ray.launcher; print('ray' in sys.modules, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"num_workers": 0}, "launcher.num_workers: must be >= 1"),
        ({"address": "not an address"}, "launcher.address: 'not an address' is not a Ray cluster address"),
        ({"resources_per_worker": {"GPU": 1}}, "launcher.resources_per_worker.GPU: GPU has a key of its own"),
        ({"job": True}, "launcher.job: job mode submits to a running cluster"),
        ({"env": {"BAD-NAME": "1"}}, "launcher.env.BAD-NAME: not a valid environment variable name"),
    ],
)
def test_ray_bad_keys_are_errors_before_connecting(kw: dict[str, Any], expected: str) -> None:
    from automodel_ray.launcher import RayLauncher, RayLaunchError

    with pytest.raises(RayLaunchError, match="^" + expected.replace(".", r"\.").replace("(", r"\(")):
        RayLauncher(**kw)


def test_ray_dry_run_shows_the_submission_and_a_rayjob_manifest(tmp_path: Path, tiny_model_dir: Path) -> None:
    launcher = {"name": "ray", "address": "auto", "job": True, "num_workers": 2, "cpus_per_worker": 4,
                "gpus_per_worker": 1, "resources_per_worker": {"accelerator_type:H100": 0.001},
                "env": {"NCCL_DEBUG": "WARN"}, "job_address": "http://10.0.0.1:8265"}
    cfg = cfg_file(tmp_path, tiny_model_dir, "dry", launcher)
    out = run_cli("run", cfg, "--dry-run", cwd=tmp_path)
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing, connects nowhere
    text = out.stdout
    saved = tmp_path / "dry" / "config.yaml"
    entry = f"python -m automodel run {saved} launcher.job=false launcher.address=auto"
    assert f"entrypoint:  {entry}" in text
    assert "2 worker(s) x {CPU=4, accelerator_type:H100=0.001, GPU=1}" in text
    assert "Ray Jobs API at http://10.0.0.1:8265" in text and "'NCCL_DEBUG': 'WARN'" in text
    manifest = yaml.safe_load(text.split("# KubeRay RayJob manifest", 1)[1].split("\n", 1)[1])
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert manifest["metadata"]["name"] == "automodel-dry"
    spec = manifest["spec"]
    assert spec["entrypoint"] == entry and spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"env_vars": {"NCCL_DEBUG": "WARN"}}
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["rayStartParams"]["num-gpus"] == "1" and group["rayStartParams"]["num-cpus"] == "4"
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["env"] == [{"name": "NCCL_DEBUG", "value": "WARN"}]
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no training on the head


# --------------------------------------------------------------------------------------------------
# bad input against the real cluster: clear errors before anything is submitted
# --------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreachable", "too_many_workers", "gpu_on_cpu_cluster"])
def test_ray_cluster_problems_are_clear_errors(case: str, ray_cluster: dict[str, str], tmp_path: Path, tiny_model_dir: Path) -> None:
    launcher, expected = {
        "unreachable": ({"address": f"127.0.0.1:{_closed_port()}"}, "launcher.address: cannot reach the Ray cluster at"),
        "too_many_workers": ({"num_workers": 4, "parallel": None}, "launcher.num_workers: 4 worker(s) x 1 CPU need 4 CPU, "
                             "but the Ray cluster has 2"),
        "gpu_on_cpu_cluster": ({"gpus_per_worker": 1}, "launcher.gpus_per_worker: 1 GPU(s) per worker requested, but the "
                               "Ray cluster at"),
    }[case]
    launcher.pop("parallel", None)
    cfg = cfg_file(tmp_path, tiny_model_dir, "bad", ray_launcher(ray_cluster, **launcher))
    t0 = time.monotonic()
    out = run_cli("run", cfg, cwd=tmp_path, check=False, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "bad" / "ray").exists() and not (tmp_path / "bad" / "metrics.jsonl").exists()
    print(f"{case}: exit 2 after {time.monotonic() - t0:.1f} s")


# --------------------------------------------------------------------------------------------------
# training on the cluster
# --------------------------------------------------------------------------------------------------


def test_ray_worker_killed_restarts_and_resumes_to_the_same_losses(ray_cluster: dict[str, str], reference: dict[int, float],
                                                                   tmp_path: Path, tiny_model_dir: Path) -> None:
    """2 workers (one per node), fsdp2; kill -9 rank 1 after step 3 -> the group restarts (max_failures=1) and
    resumes from the step-2 checkpoint -> the curve equals the uninterrupted local run's, bit for bit."""
    (tmp_path / "slow_steps.py").write_text(SLOW_PLUGIN)
    cfg = cfg_file(tmp_path, tiny_model_dir, "kill", ray_launcher(ray_cluster, max_failures=1), plugins=["slow_steps"])
    run, log = tmp_path / "kill", tmp_path / "kill.log"
    t0 = time.monotonic()
    proc = start(cfg, tmp_path, log)
    try:
        wait_for(lambda: logged_steps(run) >= 3, 300, "step 3 logged", proc, log)
        worker = json.loads((run / "ray" / "workers" / "rank-1.json").read_text())
        assert logged_steps(run) < STEPS, "the run finished before a worker could be killed"
        os.kill(worker["pid"], signal.SIGKILL)
        code = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text[-4000:]
    assert "ray: worker group restarted (attempt 2, restart 1 of launcher.max_failures=1)" in text, text[-4000:]
    assert "training 8 steps" in text  # rank 0's progress lines reach this terminal
    assert "after 1 worker-group restart(s)" in text
    resumed = [line for line in text.splitlines() if "resumed from step" in line or "resuming from" in line]
    assert resumed, text[-4000:]
    after = json.loads((run / "ray" / "workers" / "rank-1.json").read_text())
    assert after["pid"] != worker["pid"]  # a new process took rank 1
    assert losses(run) == reference  # bit for bit, every step 1..8 once
    print(f"kill -9 of rank 1 (pid {worker['pid']}) after step 3 -> restart -> same {STEPS} losses; "
          f"{time.monotonic() - t0:.1f} s in all")


def test_ray_sigterm_to_the_driver_checkpoints_and_exits_75(ray_cluster: dict[str, str], tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "slow_steps.py").write_text(SLOW_PLUGIN)
    cfg = cfg_file(tmp_path, tiny_model_dir, "term", ray_launcher(ray_cluster), plugins=["slow_steps"])
    run, log = tmp_path / "term", tmp_path / "term.log"
    proc = start(cfg, tmp_path, log)
    try:
        wait_for(lambda: logged_steps(run) >= 1, 300, "step 1 logged", proc, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 75, text[-4000:]
    marker = json.loads((run / "preempted.json").read_text())
    assert 1 <= marker["step"] < STEPS, marker
    assert (run / "checkpoints" / f"step_{marker['step']}").is_dir(), sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "training stopped on SIGTERM with a checkpoint; exit code 75" in text


def test_ray_job_mode_returns_the_job_id_and_trains(ray_cluster: dict[str, str], reference: dict[int, float],
                                                    tmp_path: Path, tiny_model_dir: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    launcher = ray_launcher(ray_cluster, address="auto", job=True, job_address=ray_cluster["dashboard"])
    cfg = cfg_file(tmp_path, tiny_model_dir, "job", launcher)
    t0 = time.monotonic()
    out = run_cli("run", cfg, cwd=tmp_path)
    submitted = time.monotonic() - t0
    line = next(x for x in out.stdout.splitlines() if x.startswith("submitted Ray job "))
    job_id = line.split()[3].rstrip(":")
    client = JobSubmissionClient(ray_cluster["dashboard"])
    deadline = time.monotonic() + 400
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "ray: finished in" in logs
    assert losses(tmp_path / "job") == reference
    print(f"job {job_id}: submitted in {submitted:.1f} s, done after {time.monotonic() - t0:.1f} s")


def test_ray_name_override_on_a_local_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``launcher.name=ray`` on a config written for ``local``: its nproc_per_node is the number of workers."""
    cfg = cfg_file(tmp_path, tiny_model_dir, "swap", {"name": "local", "nproc_per_node": 2})
    out = run_cli("run", cfg, "launcher.name=ray", "--dry-run", cwd=tmp_path)
    assert "workers:     2 worker(s) x {CPU=1}, placement PACK, max_failures=0" in out.stdout, out.stdout
    bad = run_cli("run", cfg, "launcher.name=ray", "launcher.num_workers=3", "--dry-run", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "launcher.num_workers: num_workers (3) and nproc_per_node (2" in bad.stderr, bad.stderr
