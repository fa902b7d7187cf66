"""The loop's parts, each tested on its own: train_step, log, check_finite/save, the layout rules, the
contracts' defaults, the activation-checkpointing transform, and a divergence run end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from automodel import config
from automodel.contracts import Checkpointer, Logger, Parallelizer, Transform, member, missing_members
from automodel.mesh import plan_layout
from automodel.plugins import load_plugins
from automodel.testing import make_config, read_metrics, run_cli
from automodel.train import Diverged, Trainer


def _trainer(tmp_path: Path, model_dir: Path, **sections) -> Trainer:
    plugins = load_plugins()
    validated = config.validate(config.load(make_config(tmp_path, model_dir, **sections)), plugins)
    return Trainer(validated)


@pytest.fixture
def two_trainers(tmp_path: Path, tiny_model_dir: Path):
    # SGD: the update is the gradient (Adam's first step is about lr * sign(grad) for any tiny gradient)
    trainers = [_trainer(tmp_path / name, tiny_model_dir, optimizer={"name": "sgd", "lr": 0.1}) for name in ("a", "b")]
    yield trainers
    for t in trainers:
        t._finish({}, teardown=False)


def test_train_step_gives_the_same_update_for_any_micro_batch_split(two_trainers) -> None:
    split, whole = two_trainers
    examples = [split.data.dataset[i] for i in range(8)]
    collate = split.data.loader.collate_fn
    a = split.train_step([collate(examples[:4]), collate(examples[4:])])
    b = whole.train_step([collate(examples)])
    assert split.train_state.step == whole.train_state.step == 1
    assert torch.allclose(a.loss_sum, b.loss_sum, atol=1e-5), (a.loss_sum, b.loss_sum)
    assert torch.allclose(a.grad_norm, b.grad_norm, rtol=1e-4)
    assert int(a.label_tokens) == int(b.label_tokens) == sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
    for p, q in zip(split.model.parameters(), whole.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_log_reports_tokens_seen_and_refuses_a_non_finite_step(two_trainers) -> None:
    t = two_trainers[0]
    examples = [t.data.dataset[i] for i in range(8)]
    collate = t.data.loader.collate_fn
    micro = [collate(examples[:4]), collate(examples[4:])]
    tokens = sum(b["input_ids"].numel() for b in micro)
    metrics = t.log(1, t.train_step(micro))
    assert metrics["tokens_seen"] == tokens and metrics["loss"] > 0 and "mfu" not in metrics
    metrics = t.log(2, t.train_step(micro))
    assert metrics["tokens_seen"] == 2 * tokens
    assert [r["tokens_seen"] for r in read_metrics(t.ctx.output_dir)] == [tokens, 2 * tokens]
    # a logging window of two steps: label_tokens counts both, label_tokens_per_s = label_tokens / window time
    labels = sum(int((b["labels"] != -100).sum()) for b in micro)
    t.train_step(micro)
    metrics = t.log(4, t.train_step(micro))
    assert metrics["label_tokens"] == 2 * labels and metrics["tokens_seen"] == 4 * tokens
    assert metrics["label_tokens_per_s"] == pytest.approx(metrics["tokens_per_s"] * 2 * labels / (2 * tokens), rel=1e-9)
    assert set(read_metrics(t.ctx.output_dir)[-1]) >= {"loss", "tokens_per_s", "label_tokens_per_s", "tokens_seen", "label_tokens"}

    t.first_bad_step.fill_(2)  # as if step 2 had produced a NaN (recorded on the device, not yet read)
    with pytest.raises(Diverged, match="first non-finite at step 2") as e:
        t.save(2)
    assert "no checkpoint was saved before it" in str(e.value) and "To fix: lower optimizer.lr" in str(e.value)
    assert not (t.ctx.output_dir / "checkpoints").exists()  # refused before writing anything
    t.first_bad_step.fill_(1)
    with pytest.raises(Diverged, match="before any weight update, so the learning rate is not the cause"):
        t.check_finite()


NAN_PLUGIN = '''
import torch.nn.functional as F
from automodel import hookimpl


class NanFrom:
    """Cross-entropy that turns NaN from optimizer step `step` on (2 micro-batches per step)."""

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def __call__(self, *, labels, num_label_tokens, logits=None, **_):
        self.calls += 1
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
        loss = loss / num_label_tokens
        return loss * float("nan") if (self.calls + 1) // 2 >= self.step else loss


@hookimpl
def register_losses(register):
    register("nan_from", NanFrom)


@hookimpl
def on_train_end(ctx, metrics):
    (ctx.output_dir / "train_end.json").write_text("{}")
'''


def test_a_nan_between_logging_steps_is_caught_before_the_next_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    """NaN from step 3, logging every 6 steps, checkpoints every 2: the step-4 checkpoint is refused
    (it used to be saved and marked latest), the error names step 3, on_train_end still runs."""
    (tmp_path / "nanloss.py").write_text(NAN_PLUGIN)
    cfg = make_config(
        tmp_path, tiny_model_dir, plugins=["nanloss"], loss={"name": "nan_from", "step": 3},
        step_scheduler={"global_batch_size": 8, "local_batch_size": 4, "max_steps": 8, "log_every_steps": 6, "ckpt_every_steps": 2},
        checkpoint={"export_hf": False},
    )
    proc = run_cli("run", cfg, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "first non-finite at step 3" in proc.stderr and "the last checkpoint (step 2)" in proc.stderr
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_2"]
    assert (ckpts / "latest").read_text().strip() == "step_2"
    assert (tmp_path / "run" / "train_end.json").exists()


def test_layout_rules_live_in_one_place() -> None:
    ddp = SimpleNamespace(dim="dp_replicate", size=None, exclusive="it replicates a plain model")
    tp = SimpleNamespace(dim="tp", size=2)
    _, problems = plan_layout([ddp, tp], 4, ["ddp", "tp"])
    assert problems == [("parallel.0", "'ddp' cannot be combined with 'tp': it replicates a plain model", None)]
    layout, problems = plan_layout([tp, SimpleNamespace(dim="dp_shard", size=None)], 4)
    assert problems == [] and layout.plan.sizes == {"dp_shard": 2, "tp": 2}
    assert [p.dim for p in layout.innermost_first] == ["tp", "dp_shard"]


def test_contracts_declare_the_defaults_the_loop_uses() -> None:
    bare = SimpleNamespace(save=1, load=1, export=1)
    assert member(bare, Checkpointer, "save_final") is True and member(bare, Checkpointer, "export_hf") is True
    assert member(bare, Checkpointer, "load_model") is None
    assert member(SimpleNamespace(), Parallelizer, "meta_init") is False
    assert member(SimpleNamespace(), Transform, "export") is None
    with pytest.raises(AttributeError, match="declares no optional member 'apply'"):
        member(SimpleNamespace(), Transform, "apply")  # required members are not guessed
    assert missing_members(SimpleNamespace(log=1), Logger) == ["close"]
    assert missing_members(SimpleNamespace(apply=1), Parallelizer) == ["dim", "size"]


def test_gradient_sync_is_what_each_parallelizer_declares() -> None:
    """runtime.grad_sync enters each parallelizer's declared grad_sync (no guessing from the model's
    attributes); a parallelizer without one leaves gradients synchronised on every micro-batch."""
    import contextlib

    from automodel import runtime
    from automodel.builtin.parallel import DDP

    seen: list[tuple[str, bool]] = []

    class Declares:
        dim, size = "dp_shard", None

        def grad_sync(self, model, enabled):
            seen.append(("declares", enabled))
            return contextlib.nullcontext() if enabled else contextlib.ExitStack()

    class Silent:
        dim, size = "tp", None

    model = torch.nn.Linear(2, 2)
    model.no_sync = lambda: pytest.fail("no_sync guessed from the model")  # type: ignore[attr-defined]
    for enabled in (False, True):
        with runtime.grad_sync(model, enabled, [Declares(), Silent()]):
            pass
    assert seen == [("declares", False), ("declares", True)]
    with runtime.grad_sync(model, False, []):  # no parallelizer applied (one process): nothing to skip
        pass
    assert member(DDP(), Parallelizer, "grad_sync") is not None  # the builtin DDP declares its no_sync


def test_activation_checkpointing_recomputes_blocks_and_keeps_the_gradients(tiny_model_dir: Path) -> None:
    from automodel.builtin.transforms import ActivationCheckpointing
    from automodel.context import Context
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ckpt = copy.deepcopy(plain)
    calls, mlp = [], ckpt.model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # recomputation bypasses module hooks
    ckpt = ActivationCheckpointing().apply(ckpt, Context())
    ids = torch.randint(0, 40, (2, 16))
    grads = []
    for model in (plain, ckpt):
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == 2  # forward, then the recomputation in backward
    assert grads[0].keys() == grads[1].keys()  # parameter names unchanged
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_peak_tflops_gives_mfu_and_activation_checkpointing_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, peak_tflops=0.5, transforms=[{"name": "activation_checkpointing"}],
                      step_scheduler={"global_batch_size": 8, "local_batch_size": 4, "max_steps": 3})
    proc = run_cli("run", cfg, cwd=tmp_path)
    assert "activation checkpointing: 2 LlamaDecoderLayer blocks" in proc.stdout
    records = read_metrics(tmp_path / "run")
    assert len(records) == 3 and all(0 < r["mfu"] < 1 for r in records)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["tokens_seen"] > 0
