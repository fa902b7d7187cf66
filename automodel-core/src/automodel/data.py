"""From a dataset of examples to micro-batches: sharding over data-parallel ranks, shuffling per epoch,
padding and label shifting, and a data position that a checkpoint restores exactly.

The loop uses two things from here: :class:`TrainData` (micro-batches forever, resumable) and
:func:`validation_loader` (one pass, sharded, in order).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from automodel.state import TrainState


class Collator:
    """Pad a list of examples to the longest, shift labels by one (the loss contract), build masks."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), n), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.as_tensor(e["input_ids"])
            labels[i, : k - 1] = torch.as_tensor(e["labels"][1:k])
            mask[i, :k] = 1
        batch = {"input_ids": ids, "labels": labels}
        if not bool(mask.all()):
            batch["attention_mask"] = mask
        return batch


class ResumableSampler:
    """Wraps a sampler (``DistributedSampler``) so that the next pass starts ``skip`` indices in.

    Resuming mid-epoch skips the consumed indices without loading or collating their examples;
    the pass after that is complete again. ``len()`` stays the full length of the wrapped sampler.
    """

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Any:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return len(self.sampler)


class TrainData:
    """Micro-batches of ``local_batch_size`` examples for this data-parallel rank, epoch after epoch
    (reshuffled per epoch with ``seed``), starting from the data position in ``state``.

    ``state.epoch`` seeds the shuffle; ``state.epoch_samples`` counts the sequences of that epoch that
    all data-parallel ranks together have consumed, so a resumed run skips exactly those, also at
    another data-parallel size (the global order is the same).
    """

    def __init__(self, dataset: Any, collate: Any, local_batch_size: int, dp_rank: int, dp_size: int, seed: int):
        self.dataset = dataset
        self.samples_per_batch = local_batch_size * dp_size  # sequences all dp ranks consume per micro-batch
        self.sampler = ResumableSampler(
            DistributedSampler(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=True, seed=seed, drop_last=True)
        )
        # its own generator: starting an epoch then draws no number from the global RNG, whose
        # checkpointed state therefore continues identically after a mid-epoch resume (dropout)
        self.loader = DataLoader(dataset, batch_size=local_batch_size, sampler=self.sampler, collate_fn=collate,
                                 drop_last=True, generator=torch.Generator().manual_seed(seed))

    def micro_batches_per_epoch(self) -> int | None:
        """Micro-batches per epoch on this rank; None when unknown (a streaming dataset)."""
        return len(self.loader)

    def batches(self, state: TrainState) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches forever, from (and advancing) the data position in ``state``."""
        while True:
            self.sampler.set_epoch(state.epoch)
            skip = state.epoch_samples // self.samples_per_batch
            state.epoch_samples = skip * self.samples_per_batch
            self.sampler.skip = skip * self.loader.batch_size
            for batch in self.loader:
                state.epoch_samples += self.samples_per_batch
                yield batch
            state.epoch += 1
            state.epoch_samples = 0


def validation_loader(dataset: Any, collate: Any, batch_size: int, dp_rank: int, dp_size: int) -> DataLoader:
    """One ordered pass over ``dataset``, split over the data-parallel ranks."""
    sampler = DistributedSampler(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
