"""The kd loss in real runs (the CLI, gloo on CPU): trains, checkpoints and exports only the student,
resumes on the same curve, fsdp2 / tp over 2 processes match 1 process, vocabulary checked up front."""

from __future__ import annotations

import json
import shutil

import yaml
from automodel.testing import read_metrics, run_cli, tiny_model
from kd_helpers import STEPS, curve, kd_config, kd_loss


def assert_same_curve(got, base, what):
    (losses, norms), (base_losses, base_norms) = got, base
    assert len(losses) == len(base_losses) == STEPS["max_steps"], (what, got, base)
    for a, b in zip(losses, base_losses):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (what, losses, base_losses)
    for a, b in zip(norms, base_norms):
        assert abs(a - b) < 1e-3 * max(1.0, abs(b)), (what, norms, base_norms)


def test_trains_and_saves_only_the_student(one_process_run):
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    directory, _, (losses, norms), stdout = one_process_run
    assert "kd: teacher 0.08M parameters (float32, not sharded, frozen)" in stdout
    assert all(x == x for x in losses + norms) and losses[-1] < losses[0], losses
    student = AutoModelForCausalLM.from_pretrained(directory / "run" / "hf")  # the export is the student
    assert student.config.hidden_size == 32 and student.config.num_hidden_layers == 1
    meta = dcp.FileSystemReader(str(directory / "run" / "checkpoints" / "step_4")).read_metadata()
    saved = {k.removeprefix("model."): tuple(v.size) for k, v in meta.state_dict_metadata.items() if k.startswith("model.")}
    assert saved == {k: tuple(v.shape) for k, v in student.state_dict().items()}  # no teacher weight in the checkpoint


def test_resume_continues_the_same_curve(one_process_run, tmp_path):
    directory, cfg, (losses, norms), _ = one_process_run
    config = yaml.safe_load(cfg.read_text())
    config["output_dir"] = str(tmp_path / "run")
    config["checkpoint"]["resume"] = "auto"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(directory / "run" / "checkpoints" / "step_2", tmp_path / "run" / "checkpoints" / "step_2")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_cli("run", path, cwd=tmp_path)
    assert "resumed from step 2" in proc.stdout, proc.stdout
    records = {r["step"]: r for r in read_metrics(tmp_path / "run")}
    assert sorted(records) == [3, 4], records
    for step in (3, 4):
        assert abs(records[step]["loss"] - losses[step - 1]) < 1e-5, (records, losses)
        assert abs(records[step]["grad_norm"] - norms[step - 1]) < 1e-4, (records, norms)


def test_fsdp2_two_processes_match_one_process(one_process_run, tmp_path, tiny_model_dir):
    """Student and teacher both fully_shard-ed over 2 ranks, each rank its half of the batch."""
    cfg = kd_config(tmp_path, tiny_model_dir, parallel=[{"name": "fsdp2"}], launcher={"name": "local", "nproc_per_node": 2})
    run_cli("run", cfg, cwd=tmp_path)
    assert_same_curve(curve(tmp_path), one_process_run[2], "fsdp2 x2")


def test_tensor_parallel_two_processes_match_one_process(one_process_run, tmp_path, tiny_model_dir):
    """tp x2: both lm_heads sharded over the vocabulary; the loss combines the shards' statistics."""
    cfg = kd_config(tmp_path, tiny_model_dir, parallel=[{"name": "tp", "size": 2}], launcher={"name": "local", "nproc_per_node": 2})
    run_cli("run", cfg, cwd=tmp_path)
    assert_same_curve(curve(tmp_path), one_process_run[2], "tp x2")


def test_vocabulary_mismatch_is_reported_before_launch(tmp_path, tiny_model_dir):
    teacher = tiny_model(tmp_path / "teacher", vocab_size=50)
    tok = json.loads((teacher / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # two ids swapped
    (teacher / "tokenizer.json").write_text(json.dumps(tok))
    cfg = kd_config(tmp_path, tiny_model_dir, loss=kd_loss(teacher))
    proc = run_cli("validate", cfg, cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "loss.teacher" in out and "vocab_size differs: student 48 vs teacher 50" in out, out
    assert "2 ids map to different tokens" in out and "'a' (student) vs 'b' (teacher)" in out, out
    assert "Traceback" not in out, out


TEACHER_LOADER = """
from automodel import hookimpl
from automodel.builtin.models import hf


def my_teacher(ctx, weights: str):  # a third-party loader with keys of its own
    return hf(ctx, pretrained=weights)


my_teacher.model_config = lambda args: hf.model_config({"pretrained": args.get("weights")})
my_teacher.tokenizer_dir = lambda args: args.get("weights")


@hookimpl
def register_model_loaders(register):
    register("my_teacher", my_teacher)
"""


def test_vocabulary_check_reads_what_a_third_party_loader_declares(tmp_path, tiny_model_dir):
    """The teacher's tokenizer is found where its loader says (``tokenizer_dir``), not under the hf
    loader's keys: a teacher loaded by another plugin is checked the same way."""
    teacher = tiny_model(tmp_path / "teacher")
    tok = json.loads((teacher / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (teacher / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "teacher_loader.py").write_text(TEACHER_LOADER)
    cfg = kd_config(tmp_path, tiny_model_dir, loss={**kd_loss(teacher), "teacher": {"name": "my_teacher", "weights": str(teacher)}},
                    plugins=["teacher_loader"])
    proc = run_cli("validate", cfg, cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "loss.teacher" in out and "2 ids map to different tokens" in out, out
    assert "Traceback" not in out, out
