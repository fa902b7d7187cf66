"""``Loss.logits_at_labels``: the builtin masked_ce declares it, and the loop then projects only the label
positions through ``lm_head`` (transformers' boolean ``logits_to_keep``) with the same loss and gradients
as full logits; padded and packed batches alike. A loss that does not declare it gets full logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from automodel import config
from automodel.plugins import load_plugins
from automodel.testing import make_config
from automodel.train import Trainer


def _trainer(tmp_path: Path, model_dir: Path, **sections) -> Trainer:
    plugins = load_plugins()
    validated = config.validate(config.load(make_config(tmp_path, model_dir, **sections)), plugins)
    return Trainer(validated)


def _loss_grads_and_rows(t: Trainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Loss, gradients and the number of positions lm_head projected, for one micro-batch."""
    rows: list[int] = []
    head = t.hf_model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        n = (batch["labels"] != -100).sum().clamp(min=1).float()
        t.model.zero_grad(set_to_none=True)
        loss = t.forward(batch, n)
        loss.backward()
    finally:
        handle.remove()
    return loss.detach(), [p.grad.clone() for p in t.model.parameters() if p.requires_grad], sum(rows)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_masked_ce_projects_only_label_positions_with_the_same_loss_and_gradients(
        tmp_path: Path, tiny_model_dir: Path, packing: bool) -> None:
    t = _trainer(tmp_path, tiny_model_dir)
    if packing:
        dataset = {**t.cfg["dataset"], "packing": True, "max_length": 64}
        t._finish({}, teardown=False)
        t = _trainer(tmp_path / "packed", tiny_model_dir, dataset=dataset,
                     step_scheduler={"global_batch_size": 2, "local_batch_size": 2, "max_steps": 2})
    try:
        assert t.logits_at_labels  # masked_ce declares it; a transformers Llama slices with a boolean mask
        batch = t.data.loader.collate_fn([t.data.dataset[i] for i in range(4 if not packing else 2)])
        assert ("position_ids" in batch) == packing
        keep = int((batch["labels"] != -100).sum())
        assert 0 < keep < batch["labels"].numel()  # prompts (and padding) carry no label
        loss, grads, rows = _loss_grads_and_rows(t, batch)
        t.logits_at_labels = False
        full_loss, full_grads, full_rows = _loss_grads_and_rows(t, batch)
    finally:
        t._finish({}, teardown=False)
    assert (rows, full_rows) == (keep, batch["labels"].numel())
    assert torch.allclose(loss, full_loss, rtol=1e-6, atol=1e-6), (loss, full_loss)
    for g, f in zip(grads, full_grads, strict=True):
        assert torch.allclose(g, f, rtol=1e-5, atol=1e-7)


class FullLogitsLoss:
    """A loss that needs every position's logits (it does not declare logits_at_labels)."""

    shapes: list[tuple[int, ...]] = []

    def __call__(self, *, logits, labels, num_label_tokens):
        FullLogitsLoss.shapes.append((tuple(logits.shape), tuple(labels.shape)))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 reduction="sum") / num_label_tokens


def test_a_loss_that_does_not_declare_it_gets_every_position(tmp_path: Path, tiny_model_dir: Path) -> None:
    t = _trainer(tmp_path, tiny_model_dir, loss={"_target_": f"{__name__}.FullLogitsLoss"})
    try:
        assert not t.logits_at_labels
        batch = t.data.loader.collate_fn([t.data.dataset[i] for i in range(4)])
        t.forward(batch, torch.tensor(1.0))
    finally:
        t._finish({}, teardown=False)
    (logits_shape, labels_shape), = FullLogitsLoss.shapes[-1:]
    assert logits_shape[:2] == labels_shape == tuple(batch["labels"].shape)
