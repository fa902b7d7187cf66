"""The kd loss object: options, setup (teacher frozen, eval, own dtype), the loop's call, the kit."""

from __future__ import annotations

import pytest
import torch
from automodel.context import Context
from automodel.errors import ConfigError
from automodel.plugins import load_plugins
from automodel_kd.fused import reference_kd_loss
from automodel_kd.loss import KnowledgeDistillation
from kd_helpers import STUDENT


def built_student(teacher_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(STUDENT)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))


def test_setup_loads_a_frozen_teacher_in_its_own_dtype_and_matches_reference(tmp_path, tiny_model_dir):
    student = built_student(tiny_model_dir)
    loss = KnowledgeDistillation(teacher={"name": "hf", "pretrained": str(tiny_model_dir), "dtype": "bfloat16"},
                                 kind="reverse_kl", temperature=2.0, kd_weight=0.8)
    ctx = Context(output_dir=tmp_path, config={"seed": 0, "parallel": []}, plugins=load_plugins(), device=torch.device("cpu"))
    loss.setup(student, ctx)
    teacher = loss.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert "teacher" not in dict(student.named_modules()) and len(student.state_dict()) == len(built_student(tiny_model_dir).state_dict())

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 48, (2, 10), generator=g)
    labels = torch.randint(3, 48, (2, 10), generator=g)
    labels[:, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    hidden = {}

    def keep(module, args, out):
        hidden["h"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

    student.get_decoder().register_forward_hook(keep)
    student(input_ids=ids, attention_mask=batch["attention_mask"])
    n = (labels != -100).sum().float()
    got = loss(labels=labels, num_label_tokens=n, hidden_states=hidden["h"],
               lm_head_weight=student.get_output_embeddings().weight, batch=batch)
    got.backward()
    grad = student.get_output_embeddings().weight.grad.clone()
    student.zero_grad()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    ref = reference_kd_loss(student(input_ids=ids, attention_mask=batch["attention_mask"]).logits, teacher_logits, labels, n,
                            loss.options)
    ref.backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, student.get_output_embeddings().weight.grad, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in teacher.parameters())  # no gradient ever reaches the teacher


@pytest.mark.parametrize("options,key", [
    ({"temperature": 0}, "temperature"), ({"kd_weight": 1.5}, "kd_weight"), ({"beta": 1.0}, "beta"),
    ({"chunk_size": 0}, "chunk_size"), ({"teacher": "runs/x"}, "teacher")])
def test_bad_options(options, key):
    """Built directly (no config around it), the error names the argument; in a config, validation reports
    the same problem as loss.<key> before anything is built (test_kd_train)."""
    args = {"teacher": {"name": "hf", "pretrained": "x"}, **options}
    with pytest.raises(ConfigError, match=f"^{key}: "):
        KnowledgeDistillation(**args)


def test_conformance_kit(tiny_model_dir):
    from automodel.testing import check_plugin

    report = check_plugin("kd", args={"kd": {"teacher": {"name": "hf", "pretrained": str(tiny_model_dir)}}})
    assert report.checked and not report.skipped, str(report)
