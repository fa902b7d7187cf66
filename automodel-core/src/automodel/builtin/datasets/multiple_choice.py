"""``hellaswag``: multiple choice (a context and several endings, one right); as a validation dataset it
reports accuracy (:meth:`MultipleChoice.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automodel.builtin.datasets.common import Problems, column_problems, file_dataset, load, require_columns
from automodel.errors import AutomodelError


class MultipleChoice:
    """Multiple-choice examples (a context and several endings, one correct).

    As a map-style dataset, item ``i`` is the context followed by the correct ending, loss on the ending
    (so it can also be trained on, or validated by mean token loss). :meth:`evaluate` scores every
    ending by the log-likelihood of its tokens given the context and reports accuracy.
    """

    def __init__(self, examples: list[tuple[list[int], list[list[int]], int]], max_length: int, batch_size: int):
        self.examples = examples  # (context ids incl. BOS, [ending ids], label)
        self.max_length = max_length
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.examples)

    def _sequence(self, context: list[int], ending: list[int]) -> tuple[list[int], int]:
        """Context + ending, the context cut from the left to fit ``max_length``; (ids, ending start)."""
        keep = max(1, self.max_length - len(ending))
        ctx_ids = context[-keep:]
        ids = (ctx_ids + ending)[: self.max_length]
        return ids, len(ctx_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        context, endings, label = self.examples[i]
        ids, start = self._sequence(context, endings[label])
        return {"input_ids": ids, "labels": [-100] * start + ids[start:]}

    def _scores(self, model: Any, device: Any, examples: list[tuple[list[int], list[list[int]], int]]) -> tuple[Any, Any]:
        """(summed, mean) log-likelihood of every ending: two [examples, endings] tensors."""
        import torch

        seqs = [self._sequence(c, e) for c, endings, _ in examples for e in endings]
        n = max(len(s) for s, _ in seqs)
        ids = torch.zeros((len(seqs), n), dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        target = torch.zeros((len(seqs), n), dtype=torch.bool)  # positions whose next token is an ending token
        for i, (s, start) in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            target[i, start - 1 : len(s) - 1] = True
        ids, mask, target = ids.to(device), mask.to(device), target.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logp = torch.where(target[:, :-1], logp, torch.zeros_like(logp))
        total = logp.sum(-1)
        mean = total / target[:, :-1].sum(-1).clamp(min=1)
        k = max(len(endings) for _, endings, _ in examples)  # examples with fewer endings: -inf for the rest
        out_total = torch.full((len(examples), k), float("-inf"), device=total.device)
        out_mean = out_total.clone()
        row = 0
        for i, (_, endings, _) in enumerate(examples):
            out_total[i, : len(endings)] = total[row : row + len(endings)]
            out_mean[i, : len(endings)] = mean[row : row + len(endings)]
            row += len(endings)
        return out_total, out_mean

    def evaluate(self, model: Any, ctx: Any) -> dict[str, Any]:
        """Accuracy over this rank's share of the examples (``ctx.dp_rank`` of ``ctx.dp_size``), summed over
        all ranks when ``torch.distributed`` is initialized. ``val_accuracy``: the ending with the highest
        summed log-likelihood is right; ``val_accuracy_norm``: the highest mean per-token log-likelihood."""
        import torch
        import torch.distributed as dist

        mine = self.examples[ctx.dp_rank :: ctx.dp_size]
        per_rank = -(-len(self.examples) // ctx.dp_size)  # every rank runs as many forwards (FSDP all-gathers)
        counts = torch.zeros(3, dtype=torch.float64)  # right by sum, right by mean, examples
        with torch.no_grad():
            for lo in range(0, per_rank, self.batch_size):
                chunk = mine[lo : lo + self.batch_size]
                real = len(chunk)
                if real == 0:
                    chunk = self.examples[:1]  # a forward whose result is discarded
                total, mean = self._scores(model, ctx.device, chunk)
                if real == 0:
                    continue
                labels = torch.tensor([ex[2] for ex in chunk], device=total.device)
                counts[0] += float((total.argmax(-1) == labels).sum())
                counts[1] += float((mean.argmax(-1) == labels).sum())
                counts[2] += real
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = ctx.device if dist.get_backend() == "nccl" else "cpu"
            reduced = counts.to(device)
            dist.all_reduce(reduced)
            counts = reduced.cpu() / (dist.get_world_size() // ctx.dp_size)  # tensor-parallel peers repeat the count
        n = max(float(counts[2]), 1.0)
        return {"val_accuracy": float(counts[0]) / n, "val_accuracy_norm": float(counts[1]) / n, "val_examples": int(round(float(counts[2])))}


def _hellaswag_checks(args: dict[str, Any], p: Path | None, config: dict[str, Any]) -> Problems:
    out = column_problems(args, p, {"context": "ctx", "endings": "endings", "label": "label"})
    if isinstance(args.get("batch_size"), int) and args["batch_size"] < 1:
        out.append(("batch_size", f"must be at least 1, got {args['batch_size']}", ""))
    return out


@file_dataset(_hellaswag_checks)
def hellaswag(
    ctx: Any,
    tokenizer: Any,
    path: str,
    context: str = "ctx",
    endings: str = "endings",
    label: str = "label",
    split: str = "validation",
    max_length: int = 512,
    batch_size: int = 8,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> MultipleChoice:
    """HellaSwag-style multiple choice: ``context`` (text), ``endings`` (list of texts), ``label`` (index of
    the right ending; int or numeric string). Each ending is scored after the context and a space
    (``" " + ending``). As ``validation_dataset`` it reports ``val_accuracy`` (summed log-likelihood),
    ``val_accuracy_norm`` (per-token mean) and ``val_examples``. ``batch_size``: examples per forward."""
    data = load(path, split, False, cache_dir)
    require_columns(data, path, {"context": context, "endings": endings, "label": label})
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    examples = []
    for i, row in enumerate(data):
        options = row[endings]
        try:
            answer = int(row[label])
        except (TypeError, ValueError):
            raise AutomodelError(f"dataset: example {i} of {path}: label {row[label]!r} is not an ending index") from None
        if not isinstance(options, list) or not options or not 0 <= answer < len(options):
            raise AutomodelError(f"dataset: example {i} of {path}: label {answer} does not index its {len(options) if isinstance(options, list) else 0} endings")
        ctx_ids = bos + tokenizer.encode(str(row[context]), add_special_tokens=False)
        examples.append((ctx_ids, [tokenizer.encode(" " + str(e).strip(), add_special_tokens=False) or [tokenizer.eos_token_id] for e in options], answer))
    ctx.print(f"dataset hellaswag: {len(examples)} multiple-choice examples from {path} "
              f"({sum(len(e[1]) for e in examples)} endings scored per evaluation)")
    return MultipleChoice(examples, max_length, batch_size)
