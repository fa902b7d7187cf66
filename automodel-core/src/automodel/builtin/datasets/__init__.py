"""Builtin datasets, on Hugging Face ``datasets``, one module per family:

* :mod:`.pairs`: ``instruction`` (prompt/response pairs: column mapping, prompt templates, answer-only
  loss) and ``squad`` (context + question -> answer; SQuAD's ``answers: {text: [...]}`` or a plain string)
* :mod:`.conversations`: ``chat`` (``messages`` lists rendered with the tokenizer's chat template, loss on
  assistant turns)
* :mod:`.multiple_choice`: ``hellaswag`` (context + endings + label); as a validation dataset it reports
  accuracy (:meth:`MultipleChoice.evaluate`)
* :mod:`.synthetic`: ``mock`` (random tokens)

``instruction``, ``chat`` and ``squad`` share one pipeline (:class:`.common.Pipeline`): tokenize
(``datasets.map``: cached, ``num_proc`` workers), then samples longer than ``max_length`` are truncated or
dropped (``truncation``) and samples without a label token are dropped, both counted in a one-line summary;
then optional packing into rows of ``pack_length`` tokens (default ``max_length``;
:func:`automodel.packing.pack`), or, with ``streaming: true``, all of it lazily on a
``datasets.IterableDataset`` (:class:`automodel.data.StreamingDataset`). Every dataset that reads a
``path`` gets the same checks before anything loads (:func:`.common.file_dataset`).
"""

from automodel.builtin.datasets.common import FORMATS, JSONL_CHECK_BYTES, Pipeline, file_dataset
from automodel.builtin.datasets.conversations import ROLES, assistant_spans_by_prefix, chat
from automodel.builtin.datasets.multiple_choice import MultipleChoice, hellaswag
from automodel.builtin.datasets.pairs import instruction, squad
from automodel.builtin.datasets.synthetic import MockDataset, mock

__all__ = [
    "FORMATS", "JSONL_CHECK_BYTES", "ROLES", "MockDataset", "MultipleChoice", "Pipeline", "assistant_spans_by_prefix",
    "chat", "file_dataset", "hellaswag", "instruction", "mock", "squad",
]
