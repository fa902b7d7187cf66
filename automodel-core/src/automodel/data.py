"""From a dataset of examples to micro-batches: sharding over data-parallel ranks, shuffling per epoch,
padding and label shifting, sequence packing, streaming, and a data position that a checkpoint restores
exactly.

The loop uses two things from here: :class:`TrainData` (micro-batches forever, resumable) and
:func:`validation_loader` (one pass, sharded, in order). Datasets use :class:`StreamingDataset` (an
iterable dataset the loop shards, skips and packs on the fly); packing itself is :mod:`automodel.packing`
(its names are importable from here too, as they were before it had a module of its own).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from automodel import runtime
from automodel.errors import AutomodelError
from automodel.packing import PackedDataset, concat_samples, pack, pack_bins, pack_stream  # noqa: F401 (automodel.data.pack etc. before automodel.packing)
from automodel.state import TrainState

# --------------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------------


def _packed_detection_available() -> bool:
    """transformers builds a per-sample (block-diagonal) causal mask from ``position_ids`` itself."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


class BadRecord(AutomodelError):
    """An item of a dataset that does not fit the dataset contract (found by the collator)."""

    bad_record = True

    def __init__(self, position: int, message: str, index: int | None = None):
        self.position, self.detail = position, message
        where = f"example {position + 1} of the micro-batch"
        if index is not None:
            where = f"record {index} ({where})"
        super().__init__(f"{where}: {message}")


def _ids(example: Any, key: str, position: int, vocab_size: int | None, labels: bool = False) -> torch.Tensor:
    value = example.get(key)
    if value is None:
        raise BadRecord(position, f"has no '{key}' (keys: {', '.join(map(str, example)) or 'none'})")
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise BadRecord(position, f"{key} is not a list of int: {str(e).splitlines()[0]} ({str(value)[:60]})") from None
    if t.dim() != 1:
        raise BadRecord(position, f"{key} must be a flat list of int, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        j = next((j for j, v in enumerate(value) if not isinstance(v, int) or isinstance(v, bool)), 0) if not isinstance(value, torch.Tensor) else 0
        v = value[j]
        raise BadRecord(position, f"{key}[{j}] is {type(v).__name__} {v!r}: token ids must be int "
                                  "(a float would be cut to an integer silently)")
    low = -100 if labels else 0
    bad = (t < low) | ((t >= vocab_size) if vocab_size else torch.zeros_like(t, dtype=torch.bool))
    if labels:
        bad &= t != -100
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        allowed = f"0..{vocab_size - 1}" if vocab_size else ">= 0"
        raise BadRecord(position, f"{key}[{j}] = {int(t[j])} is not a token id ({allowed}{' or -100' if labels else ''})")
    return t.long()


def check_example(example: Any, position: int, vocab_size: int | None = None) -> dict[str, Any]:
    """``example`` with ``input_ids``/``labels`` (and ``position_ids``) as 1-d long tensors, or a
    :class:`BadRecord` naming what is wrong: not a dict, a key missing, float or out-of-vocabulary
    token ids, lengths that differ."""
    if not isinstance(example, dict):
        raise BadRecord(position, f"is a {type(example).__name__}, not a dict with input_ids and labels")
    out = dict(example)
    out["input_ids"] = _ids(example, "input_ids", position, vocab_size)
    out["labels"] = _ids(example, "labels", position, vocab_size, labels=True)
    if len(out["input_ids"]) != len(out["labels"]) or len(out["input_ids"]) == 0:
        raise BadRecord(position, f"input_ids ({len(out['input_ids'])}) and labels ({len(out['labels'])}) must have the "
                                  "same, non-zero length")
    if "position_ids" in example:
        out["position_ids"] = _ids(example, "position_ids", position, None)
        if len(out["position_ids"]) != len(out["input_ids"]):
            raise BadRecord(position, f"position_ids ({len(out['position_ids'])}) and input_ids ({len(out['input_ids'])}) differ in length")
    return out


class Collator:
    """Pad a list of examples to the longest, shift labels by one (the loss contract), build masks.

    Packed rows (examples with ``position_ids``) get ``position_ids`` in the batch and no
    ``attention_mask``: transformers then detects the packed samples from the positions restarting at 0
    and builds a block-diagonal causal mask (sdpa, eager, flex) or runs varlen flash-attention, so no
    token attends across a sample boundary. Padding of packed rows is a sample of its own (positions
    from 0) that no real token sees. The shifted label at the last token of each packed sample is
    -100: no sample learns to predict the next sample's first token.
    """

    def __init__(self, pad_id: int, vocab_size: int | None = None):
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        self._checked = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = [check_example(e, i, self.vocab_size) for i, e in enumerate(examples)]
        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), n), -100, dtype=torch.long)
        if any("position_ids" in e for e in examples):
            return self._packed(examples, ids, labels)
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

    def _packed(self, examples: list[dict[str, Any]], ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self._checked:
            if not _packed_detection_available():
                import transformers

                raise AutomodelError(
                    f"dataset: packed rows need transformers' packed-sequence masking (transformers.masking_utils, "
                    f"transformers>=4.53); this is transformers {transformers.__version__}. Upgrade transformers or set packing: false"
                )
            self._checked = True
        n = ids.shape[1]
        positions = torch.arange(n, dtype=torch.long).repeat(len(examples), 1)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            ids[i, :k] = torch.as_tensor(e["input_ids"])
            pos = torch.as_tensor(e["position_ids"]) if "position_ids" in e else torch.arange(k)
            positions[i, :k] = pos
            positions[i, k:] = torch.arange(n - k)  # padding: a sample of its own
            shifted = torch.as_tensor(e["labels"][1:k])
            shifted[pos[1:] == 0] = -100  # the last token of a sample does not predict the next sample
            labels[i, : k - 1] = shifted
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------


class StreamingDataset(torch.utils.data.IterableDataset):
    """A stream of tokenized examples (``input_ids``, ``labels``) over a Hugging Face
    ``datasets.IterableDataset`` (or any iterable), packed on the fly into rows of ``pack_length``
    tokens when set. :meth:`shard` gives one data-parallel rank's part (``split_dataset_by_node``).
    """

    def __init__(self, source: Any, pack_length: int | None = None, description: str = "stream"):
        self.source = source
        self.pack_length = pack_length
        self.description = description

    def shard(self, rank: int, size: int) -> StreamingDataset:
        if size == 1:
            return self
        try:
            import datasets
        except ImportError:  # pragma: no cover - datasets is a core dependency
            datasets = None
        if datasets is not None and isinstance(self.source, datasets.IterableDataset):
            from datasets.distributed import split_dataset_by_node

            return StreamingDataset(split_dataset_by_node(self.source, rank, size), self.pack_length, self.description)
        return StreamingDataset(_RoundRobin(self.source, rank, size), self.pack_length, self.description)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        samples = ({"input_ids": s["input_ids"], "labels": s["labels"], **({"position_ids": s["position_ids"]} if "position_ids" in s else {})}
                   for s in self.source)
        if self.pack_length:
            return pack_stream(samples, self.pack_length)
        return samples


class _RoundRobin:
    """Every ``size``-th example of an iterable, from ``rank`` on (for streams that are not HF datasets)."""

    def __init__(self, source: Iterable[Any], rank: int, size: int):
        self.source, self.rank, self.size = source, rank, size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.source), self.rank, None, self.size)


def is_streaming(dataset: Any) -> bool:
    """An iterable dataset without a length (streamed), as opposed to a map-style one."""
    return isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__")


def _shard(dataset: Any, rank: int, size: int) -> Any:
    if hasattr(dataset, "shard") and isinstance(dataset, StreamingDataset):
        return dataset.shard(rank, size)
    return StreamingDataset(dataset).shard(rank, size)


def _everyone(flag: bool) -> bool:
    """``flag`` and-ed over all ranks (one tiny all-reduce; every rank must stop an epoch together)."""
    if not runtime.distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return bool(runtime.all_reduce(torch.tensor([int(flag)], device=device), "min").item())


# --------------------------------------------------------------------------------------------------
# The loop's side
# --------------------------------------------------------------------------------------------------


class ResumableSampler:
    """Wraps a sampler (``DistributedSampler``) so that the next pass starts ``skip`` indices in.

    Resuming mid-epoch skips the consumed indices without loading or collating their examples;
    the pass after that is complete again. ``len()`` stays the full length of the wrapped sampler.
    """

    def __init__(self, sampler: Any):
        self.sampler = sampler
        self.skip = 0
        self.recent: collections.deque[int] = collections.deque(maxlen=1)  # the indices of the last micro-batch

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Any:
        skip, self.skip = self.skip, 0
        for i in itertools.islice(iter(self.sampler), skip, None):
            self.recent.append(i)
            yield i

    def __len__(self) -> int:
        return len(self.sampler)


class TrainData:
    """Micro-batches of ``local_batch_size`` examples for this data-parallel rank, epoch after epoch
    (reshuffled per epoch with ``seed``), starting from the data position in ``state``.

    ``state.epoch`` seeds the shuffle; ``state.epoch_samples`` counts the sequences of that epoch that
    all data-parallel ranks together have consumed, so a resumed run skips exactly those, also at
    another data-parallel size (the global order is the same).

    A streaming dataset (a ``torch.utils.data.IterableDataset``, e.g. :class:`StreamingDataset`) is
    read in order: each rank reads its shard, a resumed run skips the sequences its rank had consumed
    (re-reading them: the stream has no random access), and an epoch ends for every rank together when
    one rank's shard has no full micro-batch left.
    """

    def __init__(self, dataset: Any, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 local_batch_size: int, dp_rank: int, dp_size: int, seed: int):
        self.dataset = dataset
        self.collate = collate
        self.local_batch_size = local_batch_size
        self.dp_size = dp_size
        self.samples_per_batch = local_batch_size * dp_size  # sequences all dp ranks consume per micro-batch
        self.streaming = is_streaming(dataset)
        if self.streaming:
            self.stream = _shard(dataset, dp_rank, dp_size)
            return
        self.sampler = ResumableSampler(
            DistributedSampler(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=True, seed=seed, drop_last=True)
        )
        self.sampler.recent = collections.deque(maxlen=local_batch_size)
        # its own generator: starting an epoch then draws no number from the global RNG, whose
        # checkpointed state therefore continues identically after a mid-epoch resume (dropout)
        self.loader = DataLoader(dataset, batch_size=local_batch_size, sampler=self.sampler, collate_fn=collate,
                                 drop_last=True, generator=torch.Generator().manual_seed(seed))

    def micro_batches_per_epoch(self) -> int | None:
        """Micro-batches per epoch on this rank; None when unknown (a streaming dataset)."""
        return None if self.streaming else len(self.loader)

    def batches(self, state: TrainState) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches forever, from (and advancing) the data position in ``state``."""
        if self.streaming:
            yield from self._stream_batches(state)
            return
        while True:
            self.sampler.set_epoch(state.epoch)
            skip = state.epoch_samples // self.samples_per_batch
            state.epoch_samples = skip * self.samples_per_batch
            self.sampler.skip = skip * self.loader.batch_size
            for batch in self._named_records(self.loader):
                state.epoch_samples += self.samples_per_batch
                yield batch
            state.epoch += 1
            state.epoch_samples = 0

    def _named_records(self, loader: Any) -> Iterator[dict[str, torch.Tensor]]:
        """The loader's batches; a :class:`BadRecord` gets the record's index in the dataset."""
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except BadRecord as e:
                recent = list(self.sampler.recent)
                if e.position < len(recent):
                    raise BadRecord(e.position, e.detail, index=recent[e.position]) from None
                raise
            yield batch

    def _stream_batches(self, state: TrainState) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if hasattr(self.stream, "set_epoch"):
                self.stream.set_epoch(state.epoch)
            skip = state.epoch_samples // self.samples_per_batch
            state.epoch_samples = skip * self.samples_per_batch
            examples = itertools.islice(iter(self.stream), skip * self.local_batch_size, None)
            produced = False
            while True:
                chunk = list(itertools.islice(examples, self.local_batch_size))
                if not _everyone(len(chunk) == self.local_batch_size):
                    break
                produced = True
                state.epoch_samples += self.samples_per_batch
                yield self.collate(chunk)
            if not produced and skip == 0:
                raise AutomodelError(
                    f"dataset: the stream has no full micro-batch of {self.local_batch_size} sequences per data-parallel "
                    f"rank ({self.dp_size} ranks); add data or lower step_scheduler.local_batch_size"
                )
            state.epoch += 1
            state.epoch_samples = 0


def validation_loader(dataset: Any, collate: Any, batch_size: int, dp_rank: int, dp_size: int) -> DataLoader:
    """One ordered pass over ``dataset``, split over the data-parallel ranks (a stream: its rank's shard)."""
    if is_streaming(dataset):
        return DataLoader(_shard(dataset, dp_rank, dp_size), batch_size=batch_size, collate_fn=collate)
    sampler = DistributedSampler(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
