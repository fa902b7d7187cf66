"""automodel-slurm against a REAL single-node Slurm cluster (slurmctld + slurmd + munge on localhost).

* rendering: golden multi-node scripts, ``bash -n``, ``sbatch --test-only`` on the cluster;
* validation before submission: world size vs batch sizes, launcher keys;
* bad input: sbatch missing, submission refused, unknown partition (exit 2, command + stderr shown);
* a 1-node x 2-process CPU job (one torchrun per node) that trains and writes metrics;
* preemption: USR1 to the batch script of a 2-task job (one srun task per process) -> checkpoint,
  exit 75, ``scontrol requeue`` -> restart (SLURM_RESTART_COUNT=1) -> resume -> same losses as the
  uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from automodel.launch import Job
from automodel.testing import make_config, read_metrics, run_cli
from slurm_helpers import job_info, submitted_job_id, wait_done, wait_until

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
STEPS = 8
SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": STEPS, "log_every_steps": 1}

# A local plugin that makes each step last a little, so a signal lands mid-training (sleep: no CPU).
SLOW_PLUGIN = '''
import os, time
from automodel.hookspecs import hookimpl

@hookimpl
def on_step_end(ctx, step, metrics):
    time.sleep(float(os.environ.get("SLOW_STEP_S", "1.0")))
'''


def slurm_cfg(root: Path, model: Path, name: str, launcher: dict[str, Any], **sections: Any) -> Path:
    cfg = make_config(root, model, name=f"{name}.yaml", step_scheduler=SCHED, **sections)
    data = yaml.safe_load(cfg.read_text())
    data["output_dir"] = str(root / name)
    data["launcher"] = {"name": "slurm", **launcher}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def losses(output_dir: Path) -> dict[int, float]:
    records = read_metrics(output_dir)
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records}


# --------------------------------------------------------------------------------------------------
# installed, cheap import
# --------------------------------------------------------------------------------------------------


def test_plugin_installed_and_listed() -> None:
    out = run_cli("plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert "slurm" in plugins, out.stdout
    assert plugins["slurm"]["distribution"] == "automodel-slurm"
    assert plugins["slurm"]["registers"] == {"launchers": ["slurm"]}
    assert plugins["slurm"]["error"] is None


def test_import_does_not_load_torch() -> None:
    code = "import sys, automodel_slurm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------

LUSTRE = "/lustre/runs/llama"
MULTINODE = {
    "torchrun": {
        "nodes": 4, "gpus_per_node": 8, "cpus_per_task": 64, "mem": "0", "partition": "batch", "account": "llm",
        "qos": "high", "time": "04:00:00", "job_name": "llama-sft", "env": {"NCCL_DEBUG": "WARN", "HF_HOME": "/lustre/hf cache"},
        "setup": ["module load cuda/12.4", "source /lustre/venv/bin/activate"], "sbatch_args": ["--exclusive", "#SBATCH --constraint=h100"],
        "signal_grace": 300, "max_requeues": 5, "python": "python", "workdir": "/lustre/work", "log_dir": "/lustre/logs",
    },
    "container": {
        "nodes": 2, "gpus_per_node": 8, "partition": "batch", "time": "1-00:00:00",
        "container_image": "nvcr.io/nvidia/pytorch:25.01-py3", "container_mounts": ["/lustre:/lustre", "/scratch:/scratch:ro"],
        "srun_args": ["--mpi=pmix"], "workdir": "/lustre/work", "master_port": 29500,
    },
}


def render_golden(name: str, **overrides: Any) -> str:
    from automodel_slurm.launcher import SlurmLauncher
    from automodel_slurm.script import render

    launcher = SlurmLauncher(**{**MULTINODE[name], **overrides})
    job = Job({"output_dir": LUSTRE}, Path(LUSTRE) / "config.yaml", plugin_modules=["my_plugin"])
    return render(launcher.script_spec(job))


@pytest.mark.parametrize("name", sorted(MULTINODE))
def test_multinode_script_matches_golden(name: str) -> None:
    text = render_golden(name)
    golden = GOLDEN / f"multinode_{name}.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered script differs from {golden} (UPDATE_GOLDEN=1 rewrites it)"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid shell


def test_layout_chosen_from_config() -> None:
    from automodel_slurm.launcher import SlurmLauncher

    def layout(**kw: Any) -> tuple[str, int, int]:
        p = SlurmLauncher(**kw).plan
        return p.mode, p.tasks_per_node, SlurmLauncher(**kw).world_size

    assert layout(nodes=4, gpus_per_node=8) == ("torchrun", 1, 32)                      # one torchrun per node
    assert layout(nodes=4, gpus_per_node=8, container_image="img") == ("srun", 8, 32)   # one task per GPU
    assert layout(nodes=2, ntasks_per_node=4, gpus_per_node=4) == ("srun", 4, 8)
    assert layout(nodes=3, nproc_per_node=2) == ("torchrun", 1, 6)
    assert layout(nodes=3) == ("srun", 1, 3)
    assert layout(nodes=2, gpus_per_node=8, mode="srun") == ("srun", 8, 16)


def test_torchrun_script_rendezvous_on_first_node() -> None:
    text = render_golden("torchrun")
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert "--nnodes=4 --nproc-per-node=8" in text and "--rdzv-backend=c10d" in text
    assert '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"' in text
    assert "-m automodel run /lustre/runs/llama/config.yaml --plugin my_plugin" in text
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text
    assert "export HF_HOME='/lustre/hf cache'" in text
    assert text.index("#SBATCH --constraint=h100") > text.index("#SBATCH --nodes=4")  # extra lines last


# --------------------------------------------------------------------------------------------------
# validation before anything is submitted
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny model (tests/conftest.py)."""
    return tiny_model_dir


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("launcher.time=4:00:00", "launcher.time: got the number 14400"),
        ("launcher.time=four hours", "is not a Slurm time limit"),
        ("launcher.ntasks_per_node=2", "not both"),
        ("launcher.container_mounts=[/a:/b]", "container_mounts needs container_image"),
        ("launcher.env={1BAD: x}", "launcher.env.1BAD: not a valid environment variable name"),
        ("launcher.sbatch_args=[exclusive]", "is not an option"),
        ("launcher.partition=a b", "contains spaces"),
        ("launcher.nodes=0", "launcher.nodes: must be >= 1"),
        ("launcher.nodes=3", "global_batch_size"),  # world size 3 x 2 = 6 does not divide the batch of 8
        ("launcher.signal_grace=99999", "between 0 and 65535"),
        ("launcher.gpus_per_nod=8", "did you mean 'gpus_per_node'"),
    ],
)
def test_bad_launcher_config_is_caught_before_submission(tmp_path: Path, model_dir: Path, override: str, expected: str) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "bad", {"nproc_per_node": 2})
    out = run_cli("run", cfg, override, cwd=tmp_path, check=False, env={"PATH": str(tmp_path)})  # no sbatch either
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr, out.stderr
    assert not (tmp_path / "bad").exists()  # nothing written, nothing submitted


@pytest.mark.parametrize("how", ["--dry-run", "launcher.dry_run=true"])
def test_dry_run_prints_script_without_sbatch(tmp_path: Path, model_dir: Path, how: str) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "dry", {"nproc_per_node": 2})
    out = run_cli("run", cfg, how, cwd=tmp_path, env={"PATH": str(tmp_path)})  # no Slurm commands on PATH
    script = tmp_path / "dry" / "slurm" / "job.sbatch"
    assert out.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=automodel-dry")
    assert f"-m automodel run {tmp_path / 'dry' / 'config.yaml'}" in out.stdout
    if how == "--dry-run":  # prints the script, writes nothing (not even config.yaml)
        assert not (tmp_path / "dry").exists(), sorted(str(p) for p in (tmp_path / "dry").rglob("*"))
        assert f"launcher.dry_run=true writes this script to {script}" in out.stdout
        return
    assert script.read_text() in out.stdout and f"submit with: sbatch {script}" in out.stdout
    saved = yaml.safe_load((tmp_path / "dry" / "config.yaml").read_text())
    assert saved["parallel"] == [{"name": "ddp"}]  # resolved for world size 2 before rendering


def test_dry_run_of_the_local_launcher_shows_the_command_and_starts_nothing(tmp_path: Path, model_dir: Path) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "dry", {"nproc_per_node": 2})
    out = run_cli("run", cfg, "launcher={name: local, nproc_per_node: 2}", "--dry-run", cwd=tmp_path)
    saved = tmp_path / "dry" / "config.yaml"
    assert f"would start 2 processes: torchrun --standalone --nproc_per_node=2 -m automodel run {saved}" in out.stdout
    assert not (tmp_path / "dry" / "metrics.jsonl").exists()


def test_dry_run_flag_with_a_launcher_without_dry_run(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "my_launcher.py").write_text(
        "class Launcher:\n"
        "    world_size = 1\n"
        "    def launch(self, job):\n"
        "        raise SystemExit('must not start')\n"
    )
    cfg = slurm_cfg(tmp_path, model_dir, "dry", {"nproc_per_node": 1})
    out = run_cli("run", cfg, "launcher={_target_: 'my_launcher:Launcher'}", "--dry-run", cwd=tmp_path, check=False)
    # a _target_ launcher is not even built by a dry run (nothing from the config runs before `run`)
    assert out.returncode == 2 and "--dry-run: the launcher is a _target_ (my_launcher:Launcher), which a dry run does not call" in out.stderr, out.stderr
    assert not (tmp_path / "dry" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# bad input at submission
# --------------------------------------------------------------------------------------------------


def test_sbatch_missing_is_a_clear_error(tmp_path: Path, model_dir: Path) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "nosbatch", {"nproc_per_node": 2})
    out = run_cli("run", cfg, cwd=tmp_path, check=False, env={"PATH": str(tmp_path)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'sbatch' was not found on PATH" in out.stderr and f"PATH={tmp_path}" in out.stderr
    assert "launcher.dry_run=true" in out.stderr and "Traceback" not in out.stderr


def test_unknown_partition_shows_command_and_stderr(slurm_cluster: None, tmp_path: Path, model_dir: Path) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "nopart", {"nproc_per_node": 2, "partition": "nosuchpart"})
    out = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr
    assert "sbatch refused the job: `sbatch --parsable" in err and "job.sbatch` exited with code 1" in err
    assert "invalid partition specified: nosuchpart" in err  # sbatch's own stderr
    assert "check launcher.partition; partitions here: debug" in err
    assert "submitted" not in out.stdout


def test_refused_submission_shows_command_and_stderr(slurm_cluster: None, tmp_path: Path, model_dir: Path) -> None:
    cfg = slurm_cfg(tmp_path, model_dir, "toobig", {"nproc_per_node": 2, "cpus_per_task": 4096})
    out = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "sbatch refused the job: `sbatch --parsable" in out.stderr
    assert "Batch job submission failed: More processors requested than permitted" in out.stderr  # sbatch's stderr
    assert "check launcher.nodes, ntasks_per_node, gpus_per_node, cpus_per_task, mem" in out.stderr


# --------------------------------------------------------------------------------------------------
# sbatch --test-only: Slurm itself parses the rendered scripts
# --------------------------------------------------------------------------------------------------


def test_rendered_scripts_pass_sbatch_test_only(slurm_cluster: None, tmp_path: Path) -> None:
    from automodel_slurm.slurm import SlurmError, test_only

    for name, overrides, fits in [
        ("torchrun", {"nodes": 1, "nproc_per_node": 2, "gpus_per_node": None, "cpus_per_task": 2, "mem": None}, True),
        ("container", {"nodes": 1, "ntasks_per_node": 2, "gpus_per_node": None, "container_image": None,
                       "container_mounts": None, "srun_args": None}, True),
        ("torchrun", {"nodes": 4, "nproc_per_node": 2, "gpus_per_node": None, "cpus_per_task": None, "mem": None}, False),
    ]:
        drop = {"partition": None, "account": None, "qos": None, "workdir": str(tmp_path), "log_dir": str(tmp_path),
                "sbatch_args": ["--exclusive"]}
        script = tmp_path / f"{name}.sbatch"
        script.write_text(render_golden(name, **{**drop, **overrides}))
        if fits:
            assert "to start at" in test_only(script, cwd=str(tmp_path))
        else:  # a 4-node job on a 1-node cluster: every directive parsed, only the size is refused
            with pytest.raises(SlurmError, match="(More processors requested than permitted|Node count specification invalid|"
                                                 "Requested node configuration is not available)"):
                test_only(script, cwd=str(tmp_path))


# --------------------------------------------------------------------------------------------------
# real jobs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict[str, Any]:
    """A 1-node job with one torchrun starting 2 processes, submitted and waited for."""
    root = tmp_path_factory.mktemp("slurm_run")
    cfg = slurm_cfg(root, model_dir, "run", {"nproc_per_node": 2, "cpus_per_task": 2})
    t0 = time.monotonic()
    out = run_cli("run", cfg, cwd=root)
    job_id = submitted_job_id(out.stdout)
    info = wait_done(job_id, timeout=400)
    return {"root": root, "out": out, "job_id": job_id, "info": info, "seconds": time.monotonic() - t0}


def test_job_trains_on_the_cluster(uninterrupted: dict[str, Any]) -> None:
    run, info, job_id = uninterrupted["root"] / "run", uninterrupted["info"], uninterrupted["job_id"]
    log = run / "slurm" / f"slurm-{job_id}.out"
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert f"log:    {log}" in uninterrupted["out"].stdout
    assert f"automodel-slurm: job {job_id} (restart 0) on " in text
    assert "automodel: 2 process(es), mesh dp_replicate=2" in text  # torchrun started the 2 ranks
    assert "training exited with code 0" in text
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    print(f"\n1 node x 2 processes job {job_id}: {uninterrupted['seconds']:.1f} s from submission to completion")


def test_two_node_torchrun_script_rendezvous(uninterrupted: dict[str, Any], tmp_path: Path, model_dir: Path) -> None:
    """The 2-node torchrun script, squeezed onto this 1-node cluster (2 srun tasks on one node instead
    of 1 task on each of 2 nodes): two torchrun agents meet at the c10d endpoint taken from
    ``scontrol show hostnames``, form world size 2 and train to the same losses."""
    cfg = slurm_cfg(tmp_path, model_dir, "two", {"nodes": 2, "nproc_per_node": 1})
    out = run_cli("run", cfg, "launcher.dry_run=true", cwd=tmp_path)  # writes config.yaml and the script
    assert "--nnodes=2 --nproc-per-node=1" in out.stdout
    script = tmp_path / "two" / "slurm" / "job.sbatch"
    text = script.read_text()
    for two_nodes, one_node in [("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=2"),
                                ("srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1",
                                 "srun --kill-on-bad-exit=1 --nodes=1 --ntasks-per-node=2")]:
        assert two_nodes in text
        text = text.replace(two_nodes, one_node)
    script.write_text(text)
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    info = wait_done(job_id, timeout=400)
    log = (tmp_path / "two" / "slurm" / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "automodel: 2 process(es)" in log
    expected = losses(uninterrupted["root"] / "run")
    got = losses(tmp_path / "two")
    assert sorted(got) == sorted(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-6), (step, got, expected)


def run_preempted(tmp_path: Path, model_dir: Path, launcher: dict[str, Any], interrupt: list[str]) -> dict[str, Any]:
    """Submit the slow-step config, run ``interrupt + [job id]`` once step 2 is logged, wait until the
    job ran again and finished. Returns the job's log text, final info, losses and timings."""
    (tmp_path / "slow_steps.py").write_text(SLOW_PLUGIN)
    cfg = slurm_cfg(tmp_path, model_dir, "pre", launcher, plugins=["slow_steps"])
    t0 = time.monotonic()
    out = run_cli("run", cfg, cwd=tmp_path)
    job_id = submitted_job_id(out.stdout)
    run = tmp_path / "pre"
    metrics = run / "metrics.jsonl"

    def logged_steps() -> int:
        return len(metrics.read_text().splitlines()) if metrics.is_file() else 0

    wait_until(job_id, lambda i: i["JobState"] in ("COMPLETED", "FAILED") or logged_steps() >= 2, 300, "step 2 logged")
    assert logged_steps() < STEPS, "the job finished before it could be interrupted"
    subprocess.run([*interrupt, job_id], check=True, timeout=30)
    t_signal = time.monotonic()
    wait_until(job_id, lambda i: i["Restarts"] == "1" and i["JobState"] == "RUNNING", 120, "running again")
    latency = time.monotonic() - t_signal
    info = wait_done(job_id, timeout=400)
    text = (run / "slurm" / f"slurm-{job_id}.out").read_text()  # --open-mode=append: both runs
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", text[-3000:]
    assert f"job {job_id} (restart 0)" in text and f"job {job_id} (restart 1)" in text
    stopped = int(text.split("resumed from step ")[1].split()[0])
    assert 2 <= stopped < STEPS
    assert not (run / "preempted.json").exists()  # cleared by the resumed run
    return {"job_id": job_id, "text": text, "losses": losses(run), "stopped": stopped, "latency": latency,
            "seconds": time.monotonic() - t0}


def assert_same_losses(got: dict[int, float], uninterrupted: dict[str, Any]) -> None:
    expected = losses(uninterrupted["root"] / "run")  # the torchrun-per-node job, never interrupted
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected  # bit for bit: the resumed run continues the exact same data and RNG stream


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_losses(uninterrupted: dict[str, Any], tmp_path: Path,
                                                                   model_dir: Path) -> None:
    """One srun task per process. USR1 to the batch script (what ``--signal=B:USR1@grace`` sends) ->
    forwarded to both tasks -> checkpoint, exit 75 -> the script runs ``scontrol requeue`` -> the job
    runs again (SLURM_RESTART_COUNT=1), resumes, and logs the same losses as the uninterrupted job."""
    r = run_preempted(tmp_path, model_dir, {"ntasks_per_node": 2}, ["scancel", "--signal=USR1", "--batch"])
    text = r["text"]
    assert "SIGUSR1 received, forwarding it to the training processes" in text
    assert "received SIGUSR1: stopped after step" in text  # the training loop's own message
    assert "training exited with code 75" in text or "training checkpointed for a signal" in text
    assert f"requeuing job {r['job_id']}" in text
    assert_same_losses(r["losses"], uninterrupted)
    print(f"\nUSR1 job {r['job_id']}: stopped after step {r['stopped']}, requeue latency {r['latency']:.1f} s "
          f"(signal -> running again), {r['seconds']:.1f} s in all")


def test_scontrol_requeue_of_torchrun_job_resumes_to_the_same_losses(uninterrupted: dict[str, Any], tmp_path: Path,
                                                                      model_dir: Path) -> None:
    """One torchrun per node. ``scontrol requeue`` (SIGTERM to everything, SIGKILL after KillWait):
    training checkpoints and exits 75 within KillWait; Slurm requeues the job itself, so the script
    must not requeue it a second time; the rerun resumes to the same losses."""
    r = run_preempted(tmp_path, model_dir, {"nproc_per_node": 2}, ["scontrol", "requeue"])
    text = r["text"]
    assert "received SIGTERM: stopped after step" in text
    assert "requeuing job" not in text  # Slurm requeued it; Restarts == 1 (checked) proves no double requeue
    assert_same_losses(r["losses"], uninterrupted)
    print(f"\nscontrol requeue of torchrun job {r['job_id']}: stopped after step {r['stopped']}, requeue latency "
          f"{r['latency']:.1f} s, {r['seconds']:.1f} s in all")


def test_wait_returns_the_job_exit_code(slurm_cluster: None, tmp_path: Path, model_dir: Path) -> None:
    """``launcher.wait`` blocks until the job ends and exits with the job's exit code (for CI)."""
    cfg = slurm_cfg(tmp_path, model_dir, "fail", {"wait": True, "setup": ["echo failing on purpose", "exit 3"]})
    out = run_cli("run", cfg, cwd=tmp_path, check=False)
    job_id = submitted_job_id(out.stdout)
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"Slurm job {job_id} ended: FAILED, exit code 3" in out.stdout
    info = job_info(job_id)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "3:0"
    assert "failing on purpose" in (tmp_path / "fail" / "slurm" / f"slurm-{job_id}.out").read_text()


def _own_conftest() -> Any:
    """This directory's conftest.py as a module of its own: ``import conftest`` gets whichever test
    directory's conftest pytest imported last (kd, triton_ce, ... have one too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("automodel_slurm_tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_cluster_is_separate_from_any_other_slurm(slurm_cluster: None) -> None:
    """Its own config, state, spool, name and ports (a machine's own Slurm, with its /etc/slurm and its state
    under /var/spool, can neither confuse it nor be touched by it), and the tests talk to it alone."""
    CONF = _own_conftest().CONF

    assert os.environ["SLURM_CONF"] == str(CONF)
    conf = dict(line.split("=", 1) for line in CONF.read_text().splitlines() if "=" in line and not line.startswith(("#", "Node", "Partition")))
    base = str(CONF.parent)
    assert conf["ClusterName"] == "automodel-test" and (conf["SlurmctldPort"], conf["SlurmdPort"]) == ("6917", "6918")
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdPidFile", "SlurmctldLogFile", "SlurmdLogFile"):
        assert conf[key].startswith(base + "/"), (key, conf[key])
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "ClusterName             = automodel-test" in shown and f"StateSaveLocation       = {base}/state" in shown


def test_without_root_and_without_a_cluster_the_tests_skip_saying_why_but_never_in_ci(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conftest = _own_conftest()

    monkeypatch.setattr(conftest, "CONF", tmp_path / "slurm.conf")  # no test cluster there
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("SLURM_CONF", "unchanged")  # ensure_cluster sets it; monkeypatch restores it
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.ensure_cluster()
    assert "no Slurm test cluster (" in str(skipped.value) and "not root" in str(skipped.value)
    assert "pytest --ignore=tests/plugins/slurm" in str(skipped.value) and "sudo bash automodel-plugins" in str(skipped.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: never skipped in CI"):
        conftest.ensure_cluster()


def test_start_script_is_idempotent(slurm_cluster: None) -> None:
    start = Path(__file__).resolve().parents[3] / "automodel-plugins" / "automodel-slurm" / "ci" / "start_slurm.sh"
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cluster up" in proc.stderr and "started" not in proc.stderr  # nothing restarted
    assert time.monotonic() - t0 < 10
    assert shutil.which("sbatch")
