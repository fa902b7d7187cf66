"""Sequence packing: several tokenized samples in one row of at most ``capacity`` tokens.

A public module: the builtin datasets use it (``packing: true``) and a plugin's dataset may too, to
pack its own tokenized examples. A sample is a dict with ``input_ids`` and ``labels`` (lists of int of
the same length, labels unshifted, -100 for no loss), the dataset contract of
:class:`automodel.contracts.Dataset`. A packed row is the samples concatenated, with ``position_ids``
restarting at 0 at each sample: the builtin collator (:class:`automodel.data.Collator`) turns that into
attention that stays within a sample and masks the label that would predict the next sample's first
token, so a packed row trains each sample exactly as it would alone (see docs/data.md, Packing).

* :func:`pack` packs a map-style dataset (a ``datasets.Dataset``, a list, anything with ``len`` and
  ``[i]``) into a :class:`PackedDataset` by best-fit decreasing (:func:`pack_bins`), once, up front.
* :func:`pack_stream` packs an iterable greedily in order (streaming: a row is emitted when the next
  sample does not fit); :class:`automodel.data.StreamingDataset` uses it for ``pack_length``.
* :func:`concat_samples` builds one packed row from samples.

Example, in a plugin's dataset factory::

    from automodel.packing import pack

    def my_dataset(ctx, tokenizer, path, max_length: int = 512, packing: bool = False):
        examples = [...]  # dicts with input_ids and labels, each at most max_length tokens
        return pack(examples, max_length) if packing else examples
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = ["PackedDataset", "concat_samples", "pack", "pack_bins", "pack_stream"]


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows of at most ``capacity`` tokens (best-fit decreasing: each sample,
    longest first, goes to the fullest row it fits in). Deterministic."""
    import numpy as np

    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"{len(too_long)} samples are longer than the row length {capacity} (first: index {too_long[0]})")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    with_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # free tokens -> rows with that many
    count = np.zeros(capacity + 1, dtype=np.int64)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = max(int(lengths[i]), 1)
        hits = np.flatnonzero(count[n:])
        if len(hits):
            r = n + int(hits[0])
            b = with_room[r].pop()
            count[r] -= 1
        else:
            b = len(bins)
            bins.append([])
            room.append(capacity)
        bins[b].append(i)
        room[b] -= n
        if room[b] > 0:
            with_room[room[b]].append(b)
            count[room[b]] += 1
    return bins


def _rows(data: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Examples ``indices`` of a map-style dataset, in one read for a Hugging Face ``datasets.Dataset``."""
    if hasattr(data, "column_names"):
        cols = data[indices]
        return [{k: cols[k][j] for k in cols} for j in range(len(indices))]
    return [data[j] for j in indices]


def concat_samples(samples: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """One packed row from samples: ``input_ids`` and ``labels`` concatenated, ``position_ids`` restarting at 0."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for s in samples:
        k = len(s["input_ids"])
        ids.extend(s["input_ids"])
        labels.extend(s["labels"])
        pos.extend(range(k))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


class PackedDataset(torch.utils.data.Dataset):
    """A map-style dataset whose row ``i`` concatenates the samples ``bins[i]`` of ``data`` (see :func:`pack`)."""

    def __init__(self, data: Any, bins: list[list[int]], capacity: int, real_tokens: int):
        self.data = data
        self.bins = bins
        self.capacity = capacity
        self.real_tokens = real_tokens

    @property
    def efficiency(self) -> float:
        """Real tokens / (rows x row length): the share of the packed tensor that is not padding."""
        return self.real_tokens / max(1, len(self.bins) * self.capacity)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return concat_samples(_rows(self.data, self.bins[i]))


def pack(data: Any, capacity: int, lengths: Sequence[int] | None = None) -> PackedDataset:
    """Pack a map-style dataset of ``input_ids``/``labels`` examples into rows of at most ``capacity`` tokens.

    ``lengths`` (the token count of every sample) is read from the data when not given. A sample longer
    than ``capacity`` is a ``ValueError``: cut samples to the row length first.
    """
    if lengths is None:
        lengths = [len(x) for x in data["input_ids"]] if hasattr(data, "column_names") else [len(data[i]["input_ids"]) for i in range(len(data))]
    bins = pack_bins(lengths, capacity)
    return PackedDataset(data, bins, capacity, int(sum(lengths)))


def pack_stream(samples: Iterable[dict[str, Any]], capacity: int) -> Iterator[dict[str, list[int]]]:
    """Pack a stream greedily in order: a row is emitted when the next sample does not fit. A sample
    longer than ``capacity`` is cut to it."""
    row: list[dict[str, Any]] = []
    used = 0
    for s in samples:
        k = len(s["input_ids"])
        if k > capacity:
            s = {key: s[key][:capacity] for key in ("input_ids", "labels")}
            k = capacity
        if row and used + k > capacity:
            yield concat_samples(row)
            row, used = [], 0
        row.append(s)
        used += k
    if row:
        yield concat_samples(row)
