"""The data pipeline (automodel.data): packing, the collator's packed rows, streaming with an exact resume.

The central check: a packed batch gives every sample exactly the loss it has unpacked (sdpa and eager),
i.e. no token attends across a sample boundary and no sample predicts its neighbour's first token.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from automodel import data as data_module
from automodel import packing
from automodel.data import Collator, StreamingDataset, TrainData, validation_loader
from automodel.errors import AutomodelError
from automodel.packing import PackedDataset, concat_samples, pack, pack_bins, pack_stream
from automodel.state import TrainState
from automodel.testing import TINY_LLAMA


def samples(lengths: list[int], seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(4, TINY_LLAMA["vocab_size"], (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return out


def tiny(impl: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY_LLAMA)
    model_type = spec.pop("model_type")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec), attn_implementation=impl).eval()


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = dict(batch)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    return loss.view(labels.shape), labels


def per_sample_packed(model: torch.nn.Module, rows: list[dict[str, list[int]]], batch: dict[str, torch.Tensor]) -> list[float]:
    loss, labels = token_losses(model, batch)
    out = []
    for r, row in enumerate(rows):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            out.append(float(loss[r, a:b][labels[r, a:b] != -100].sum()))
    return out


# --------------------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------------------


def test_pack_bins_places_every_sample_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    bins = pack_bins(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert sum(lengths) / (len(bins) * 64) > 0.95  # best-fit decreasing packs random lengths tightly
    assert pack_bins(lengths, 64) == bins  # deterministic
    with pytest.raises(ValueError, match="longer than the row length 10"):
        pack_bins([5, 11], 10)


def test_packing_is_a_public_module_a_plugin_can_pack_its_own_examples_with():
    # the names automodel.data exported before automodel.packing existed are the same objects
    assert all(getattr(data_module, name) is getattr(packing, name) for name in packing.__all__)
    examples = samples([7, 3, 9, 2, 5])  # a plugin's own examples: a list of input_ids/labels dicts
    packed = pack(examples, 12)
    assert all(len(packed[r]["input_ids"]) <= 12 for r in range(len(packed)))
    assert sorted(i for b in packed.bins for i in b) == list(range(5))
    for r, b in enumerate(packed.bins):  # each row: its samples concatenated, positions restarting at 0
        assert packed[r] == concat_samples([examples[i] for i in b])
        assert packed[r]["position_ids"] == [p for i in b for p in range(len(examples[i]["input_ids"]))]
    assert packed.efficiency == pytest.approx(26 / (len(packed) * 12))
    with pytest.raises(ValueError, match="longer than the row length 8"):
        pack(examples, 8)
    # a stream: greedily in order, a sample over the row length cut to it
    rows = list(pack_stream(iter(samples([5, 4, 20, 1])), 10))
    assert [r["position_ids"] for r in rows] == [[*range(5), *range(4)], list(range(10)), [0]]
    assert rows[1]["input_ids"] == samples([5, 4, 20, 1])[2]["input_ids"][:10]


def test_collator_packed_rows_positions_boundary_labels_and_padding():
    a, b, c = samples([3, 4, 2])
    rows = [concat_samples([a, b]), concat_samples([c])]
    batch = Collator(pad_id=0)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: it would turn off packed detection
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]  # padding: its own sample
    labels = batch["labels"].tolist()
    # shifted: token t predicts t+1; the last token of sample a must not predict b's first token
    assert labels[0] == [a["input_ids"][1], a["input_ids"][2], -100, b["input_ids"][1], b["input_ids"][2], b["input_ids"][3], -100]
    assert labels[1] == [c["input_ids"][1], -100, -100, -100, -100, -100, -100]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_batch_gives_the_same_per_sample_loss_as_unpacked(impl):
    model = tiny(impl)
    data = samples([5, 9, 3, 12, 1, 7, 20, 2])
    collate = Collator(pad_id=0)
    loss, labels = token_losses(model, collate(data))  # one sample per row, padded
    unpacked = [float(loss[i][labels[i] != -100].sum()) for i in range(len(data))]

    packed = pack(data, 24)
    rows = [packed[i] for i in range(len(packed))]
    assert len(rows) < len(data)
    order = [i for b in packed.bins for i in b]
    got = per_sample_packed(model, rows, collate(rows))
    assert len(got) == len(data)
    for i, value in zip(order, got):
        assert value == pytest.approx(unpacked[i], abs=1e-5), f"sample {i}"

    # the control: the same rows without position_ids let samples see each other -> different losses
    plain = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    loss2, labels2 = token_losses(model, collate(plain))
    leaked = float(loss2[labels2 != -100].sum())
    assert abs(leaked - sum(unpacked)) > 1e-3


def test_packed_dataset_reads_hf_rows_and_reports_efficiency():
    import datasets

    data = datasets.Dataset.from_list(samples([10, 20, 30, 40]))
    packed = pack(data, 50)
    assert isinstance(packed, PackedDataset)
    assert sorted(len(packed[i]["input_ids"]) for i in range(len(packed))) == [50, 50]
    assert packed.efficiency == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# TrainData: map-style and streaming, resume
# --------------------------------------------------------------------------------------------------


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def first_ids(batches: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [row[:3] for b in batches for row in b["input_ids"].tolist()]


@pytest.mark.parametrize("packing", [False, True])
def test_streaming_resume_continues_exactly(packing):
    items = samples([random.Random(i).randint(3, 12) for i in range(60)])
    stream = StreamingDataset(Stream(items), pack_length=24 if packing else None)
    collate = Collator(pad_id=0)
    data = TrainData(stream, collate, 2, 0, 1, seed=0)
    assert data.micro_batches_per_epoch() is None
    state = TrainState()
    it = data.batches(state)
    reference = [next(it) for _ in range(40)]  # more than one epoch: the stream restarts
    assert state.epoch >= 1

    for stop in (3, 7):
        resumed = TrainState()
        it = data.batches(resumed)
        for _ in range(stop):
            next(it)
        saved = TrainState(epoch=resumed.epoch, epoch_samples=resumed.epoch_samples)
        again = TrainData(stream, collate, 2, 0, 1, seed=0).batches(saved)
        for ref in reference[stop : stop + 5]:
            b = next(again)
            assert b.keys() == ref.keys() and all(torch.equal(b[k], ref[k]) for k in b)


def test_streaming_shards_split_the_stream_and_end_the_epoch_together():
    items = samples([4] * 9)
    stream = StreamingDataset(Stream(items))
    got = []
    for rank in range(2):
        data = TrainData(stream, Collator(0), 2, rank, 2, seed=0)
        state = TrainState()
        it = data.batches(state)
        got.append(first_ids([next(it), next(it)]))
        assert state.epoch == 0 and state.epoch_samples == 8
    assert sorted(got[0] + got[1]) == sorted(x["input_ids"][:3] for x in items[:8])
    assert not set(map(tuple, got[0])) & set(map(tuple, got[1]))

    with pytest.raises(AutomodelError, match="no full micro-batch of 16"):
        next(TrainData(stream, Collator(0), 16, 0, 1, seed=0).batches(TrainState()))


def test_map_style_resume_and_validation_loader_of_a_stream():
    items = samples([5] * 16)
    data = TrainData(items, Collator(0), 2, 0, 1, seed=3)
    state = TrainState()
    it = data.batches(state)
    ref = [next(it) for _ in range(6)]
    again = TrainData(items, Collator(0), 2, 0, 1, seed=3).batches(TrainState(epoch=0, epoch_samples=6))
    assert torch.equal(next(again)["input_ids"], ref[3]["input_ids"])

    loader = validation_loader(StreamingDataset(Stream(items)), Collator(0), 4, 1, 2)
    assert sum(b["input_ids"].shape[0] for b in loader) == 8

