"""The loss and dataset interfaces plugins build on: a loss receives the keyword arguments its signature
names (labels, num_label_tokens, logits | hidden_states + lm_head_weight, batch, model, ctx), in training
and validation; ``Loss.setup(model, ctx)`` runs once before the optimizer; ``Dataset.collate`` replaces the
builtin collator; ``validate_args(args, config)`` sees the whole config. A distillation loss with a teacher
is written without any hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from automodel import config
from automodel.contracts import LOSS_ARGUMENTS, accepted_kwargs
from automodel.errors import ConfigError
from automodel.plugins import load_plugins
from automodel.testing import check_plugin, make_config, read_metrics
from automodel.train import Trainer

KD_PLUGIN = '''
import torch
import torch.nn.functional as F
from automodel import hookimpl
from automodel.data import Collator

CALLS = []  # what the loop handed over, for the test


class Distill:
    """Cross-entropy + alpha * KL(teacher || student) on label tokens; the teacher is loaded in setup()."""

    def __init__(self, teacher: str, alpha: float = 0.5, temperature: float = 1.0):
        self.teacher_path, self.alpha, self.t = teacher, alpha, temperature
        self.teacher = None

    def setup(self, model, ctx):
        from transformers import AutoModelForCausalLM

        CALLS.append(("setup", type(model).__name__, ctx.total_steps))
        self.teacher = AutoModelForCausalLM.from_pretrained(self.teacher_path).to(ctx.device).eval()
        self.teacher.requires_grad_(False)

    def __call__(self, *, logits, labels, num_label_tokens, batch, model, ctx):
        CALLS.append(("call", sorted(batch), torch.is_grad_enabled(), model.training))
        with torch.no_grad():
            t_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        mask = (labels != -100).flatten()
        s = F.log_softmax(logits.float().flatten(0, 1) / self.t, -1)
        t = F.log_softmax(t_logits.float().flatten(0, 1) / self.t, -1)
        kl = (t.exp() * (t - s)).sum(-1) * (self.t ** 2)
        ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
        weight = batch["weight"].flatten() if "weight" in batch else 1.0
        return (((1 - self.alpha) * ce + self.alpha * kl) * weight * mask).sum() / num_label_tokens

    @staticmethod
    def validate_args(args, config):
        CALLS.append(("validate_args", sorted(config)))
        if config["model"].get("pretrained") != args["teacher"] and args.get("alpha", 0.5) > 1:
            return [("alpha", f"must be <= 1, got {args['alpha']}", "e.g. 0.5")]
        return []


class Weighted:
    """A map-style dataset whose own collate adds a per-token weight column."""

    def __init__(self, ctx, tokenizer, n: int = 64):
        self.items = [{"input_ids": [1 + (i + j) % 40 for j in range(9)], "labels": [1 + (i + j) % 40 for j in range(9)]}
                      for i in range(n)]
        self.builtin = Collator(tokenizer.pad_token_id)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def collate(self, examples):
        CALLS.append(("collate", len(examples)))
        batch = self.builtin(examples)
        batch["weight"] = torch.full(batch["labels"].shape, 0.5)
        return batch


@hookimpl
def register_losses(register):
    register("distill", Distill)


@hookimpl
def register_datasets(register):
    register("weighted", Weighted)
'''


@pytest.fixture
def kd_module(tmp_path: Path, monkeypatch):
    (tmp_path / "kdplug.py").write_text(KD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("kdplug", None)
    yield "kdplug"
    sys.modules.pop("kdplug", None)


def test_accepted_kwargs_follow_the_signature() -> None:
    def only(*, logits, labels):
        return 0

    def anything(**kwargs):
        return 0

    class WithBatch:
        def __call__(self, *, labels, num_label_tokens, logits=None, batch=None):
            return 0

    assert accepted_kwargs(only, LOSS_ARGUMENTS) == ("labels", "logits")
    assert accepted_kwargs(anything, LOSS_ARGUMENTS) == LOSS_ARGUMENTS
    assert accepted_kwargs(WithBatch(), LOSS_ARGUMENTS) == ("labels", "num_label_tokens", "logits", "batch")


def test_a_distillation_loss_gets_batch_model_ctx_and_setup_without_hooks(tmp_path: Path, tiny_model_dir: Path, kd_module) -> None:
    cfg_path = make_config(
        tmp_path, tiny_model_dir, plugins=[kd_module],
        loss={"name": "distill", "teacher": str(tiny_model_dir), "alpha": 0.5},
        dataset={"name": "weighted"}, validation_dataset={"name": "weighted", "n": 8},
        step_scheduler={"global_batch_size": 8, "local_batch_size": 4, "max_steps": 2, "log_every_steps": 1, "val_every_steps": 2},
    )
    plugins = load_plugins([kd_module])
    validated = config.validate(config.load(cfg_path), plugins)
    calls = sys.modules[kd_module].CALLS
    # validate_args(args, config) saw the whole config, defaults of sections the file leaves out included
    assert ("validate_args", sorted(config.SECTIONS)) in calls
    trainer = Trainer(validated)
    setups = [c for c in calls if c[0] == "setup"]
    # once, with the built model, before the optimizer: the student's optimizer holds no teacher weight
    assert setups == [("setup", "LlamaForCausalLM", 2)]
    teacher = trainer.loss_fn.teacher
    assert not {id(p) for p in teacher.parameters()} & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    metrics = trainer.run()
    train_calls = [c for c in calls if c[0] == "call" and c[2]]
    val_calls = [c for c in calls if c[0] == "call" and not c[2]]
    # the dataset's collate made the batches; its weight column reached the loss and not the model
    assert ("collate", 4) in calls
    assert len(train_calls) == 4 and all(c[1] == ["input_ids", "labels", "weight"] and c[3] for c in train_calls)
    assert val_calls and all(not c[3] for c in val_calls)  # val_loss: the same loss, eval mode, no grad
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert metrics["val_loss"] > 0


def test_validate_args_with_config_reports_keys_with_the_section_prefix(tmp_path: Path, tiny_model_dir: Path, kd_module) -> None:
    other = tmp_path / "other"
    cfg_path = make_config(tmp_path, tiny_model_dir, plugins=[kd_module], loss={"name": "distill", "teacher": str(other), "alpha": 2.0})
    with pytest.raises(ConfigError) as e:
        config.validate(config.load(cfg_path), load_plugins([kd_module]))
    assert "loss.alpha: must be <= 1, got 2.0" in str(e.value)
    # a section with an unknown key is not handed to validate_args (its args would not be well-formed)
    cfg_path = make_config(tmp_path, tiny_model_dir, plugins=[kd_module], loss={"name": "distill", "teacher": "x", "alpah": 2.0})
    with pytest.raises(ConfigError) as e:
        config.validate(config.load(cfg_path), load_plugins([kd_module]))
    assert "loss.alpah: unknown key" in str(e.value) and "must be <= 1" not in str(e.value)


def test_the_kit_calls_a_batch_loss_as_the_loop_does(tiny_model_dir: Path, kd_module) -> None:
    report = check_plugin(kd_module, local_modules=(kd_module,), args={"distill": {"teacher": str(tiny_model_dir)}},
                          batch_columns={"distill": {"weight": torch.full((4, 8), 0.5)}})
    loss_line = next(c for c in report.checked if c.startswith("losses/distill"))
    assert "takes batch/model/ctx" in loss_line
    assert any(c[0] == "setup" for c in sys.modules[kd_module].CALLS)
    assert any(c.startswith("datasets/weighted") for c in report.checked)
