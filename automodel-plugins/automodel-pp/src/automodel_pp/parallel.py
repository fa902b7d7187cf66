"""The ``pp`` parallelizer: pipeline parallelism for Hugging Face decoder models on
``torch.distributed.pipelining`` (``PipelineStage`` + torch's schedules).

How it fits the loop (see ``contracts.Parallelizer``): ``apply`` keeps only this rank's stages of the
model (before fsdp2 shards what is left); ``forward_backward`` runs one optimizer step's micro-batches
through the schedule (the loss on the last stage, through the core's loss: ``StepLoss``); and
``clip_grad_norm`` clips to the norm over every stage. The optimizer, logging and checkpoints stay in
the core: each rank's optimizer updates its own stages' parameters.

The step's rows (this rank's micro-batches of the global batch, padded to one length) are split into
``microbatches`` pipeline micro-batches. Tied embeddings (embed_tokens = lm_head) live on the first and
the last stage; their gradients are summed across the two after backward so both copies stay equal.
"""

from __future__ import annotations

import time
from typing import Any

from automodel.errors import AutomodelError

from automodel_pp.stages import (
    SCHEDULES,
    balanced_bounds,
    decoder_parts,
    explicit_bounds,
    keep_stages,
    stage_owner,
    stages_per_rank,
)

#: parallelizers pp composes with (others are refused at validate: not built or not tested with pp)
COMPOSES_WITH = ("fsdp2", "fsdp2_replicate")
#: losses whose own autograd (hidden states + lm_head weight) cannot be split into dI / dW (zero bubble)
FUSED_LOSSES = ("triton_ce", "chunked_ce")


class Pipeline:
    """Pipeline parallelism over the ``pp`` mesh dimension.

    Config keys:

    * ``size``: pipeline ranks (processes per model replica), >= 2.
    * ``schedule``: ``gpipe``, ``1f1b`` (default), ``interleaved_1f1b``, ``interleaved_zb`` (interleaved
      zero bubble) or ``zbv`` (zero bubble, V-shaped: 2 stages per rank).
    * ``microbatches``: pipeline micro-batches per optimizer step (default: the number of stages).
      Must divide the sequences each pipeline gets per step (``global_batch_size`` / data-parallel size).
    * ``stages_per_rank``: stages each rank runs for the interleaved schedules (default 2).
    * ``split_points``: the first decoder block of every stage but the first (e.g. ``[2]`` for 2 stages
      of a 4-block model); default: balanced automatically (blocks, plus the lm_head on the last stage).
    * ``pad_to_multiple``: sequences of a step are padded to a multiple of this (stages exchange
      fixed-shape activations; each new length costs one shape handshake), default 64.
    * ``activation_checkpointing``: recompute each block's activations in backward.
    """

    dim = "pp"
    meta_init = False

    def __init__(
        self,
        size: int = 2,
        schedule: str = "1f1b",
        microbatches: int | None = None,
        stages_per_rank: int | None = None,
        split_points: list[int] | None = None,
        pad_to_multiple: int = 64,
        activation_checkpointing: bool = False,
    ):
        self.size = size
        self.schedule = schedule
        self.microbatches = microbatches
        self.stages_per_rank = stages_per_rank
        self.split_points = list(split_points) if split_points else None
        self.pad_to_multiple = pad_to_multiple
        self.activation_checkpointing = activation_checkpointing
        self.applied = False
        self.busy_s = 0.0
        self.timings: list[dict[str, float]] = []  # per step: seconds in the schedule (for bench_pp)

    @staticmethod
    def validate_args(args: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Checks before launch: sizes, the schedule, micro-batches against the batch and the stages,
        the other parallelizers, and the model's blocks when its config is given."""
        out: list[tuple[str, str, str]] = []
        size, schedule = args.get("size", 2), args.get("schedule", "1f1b")
        if not isinstance(size, int) or size < 2:
            out.append(("size", f"must be an int >= 2 (pipeline ranks), got {size!r}", "drop pp for a single pipeline rank"))
            return out
        if schedule not in SCHEDULES:
            out.append(("schedule", f"unknown schedule {schedule!r}", f"use one of {', '.join(SCHEDULES)}"))
            return out
        spr = args.get("stages_per_rank")
        if spr is not None and (not isinstance(spr, int) or spr < 1):
            out.append(("stages_per_rank", f"must be a positive int, got {spr!r}", ""))
            return out
        if spr not in (None, 1) and SCHEDULES[schedule][1] == 1:
            out.append(("stages_per_rank", f"{schedule} runs one stage per rank, got {spr}",
                        "use schedule: interleaved_1f1b or interleaved_zb for several stages per rank"))
        if spr not in (None, 2) and schedule == "zbv":
            out.append(("stages_per_rank", f"zbv runs exactly 2 stages per rank, got {spr}", "leave it out"))
        n_stages = size * stages_per_rank(schedule, spr)
        micro = args.get("microbatches")
        if micro is not None and (not isinstance(micro, int) or micro < 1):
            out.append(("microbatches", f"must be a positive int, got {micro!r}", ""))
            return out
        micro = micro or n_stages
        if schedule != "gpipe" and micro < n_stages:
            out.append(("microbatches", f"{schedule} needs at least as many micro-batches as stages ({n_stages}), got {micro}",
                        f"set microbatches >= {n_stages}, or schedule: gpipe"))
        if schedule.startswith("interleaved") and micro > size and micro % size:
            out.append(("microbatches", f"{schedule} needs a multiple of the pipeline size ({size}) when above it, got {micro}",
                        f"use {size * (micro // size)} or {size * (micro // size + 1)}"))
        pad = args.get("pad_to_multiple", 64)
        if not isinstance(pad, int) or pad < 1:
            out.append(("pad_to_multiple", f"must be a positive int, got {pad!r}", ""))
        sched = config.get("step_scheduler") or {}
        gbs = sched.get("global_batch_size")
        if isinstance(gbs, int) and gbs % micro:
            out.append(("microbatches", f"{micro} micro-batches do not divide step_scheduler.global_batch_size {gbs}",
                        "each pipeline splits its share of the global batch into equal micro-batches: pick a divisor"))
        others = [str(item.get("name") or item.get("_target_")) for item in config.get("parallel") or []
                  if (item.get("name") or item.get("_target_")) != "pp"]
        refused = [n for n in others if n not in COMPOSES_WITH]
        if refused:
            out.append(("", f"pp composes with {' and '.join(COMPOSES_WITH)} only; got {', '.join(refused)}",
                        "tensor/context/expert parallel and ddp with pp are not supported yet: use fsdp2 for data parallel"))
        loss = (config.get("loss") or {}).get("name")
        if schedule in ("interleaved_zb", "zbv") and loss in FUSED_LOSSES:
            out.append(("schedule", f"{schedule} splits backward into input and weight gradients, which the fused loss "
                        f"'{loss}' does not support (its weight gradient fails as modified in place)",
                        "use schedule: 1f1b or interleaved_1f1b with a fused loss, or loss: masked_ce"))
        for t in config.get("transforms") or []:
            if (t.get("name") or t.get("_target_")) in ("lora", "qlora", "compile"):
                out.append(("", f"pp does not support the '{t.get('name')}' transform yet",
                            "drop the transform, or train without pp"))
        split = args.get("split_points")
        if split is not None and (not isinstance(split, list) or len(split) != n_stages - 1):
            out.append(("split_points", f"{n_stages} stages need {n_stages - 1} split points, got {split!r}",
                        "list the first block of every stage but the first, e.g. [2] for 2 stages"))
        return out

    def validate_model(self, model_cfg: dict[str, Any], architecture: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """Every stage needs a decoder block (when the loader declares the model's architecture before launch)."""
        layers = (architecture or {}).get("num_hidden_layers")
        n_stages = self.size * stages_per_rank(self.schedule, self.stages_per_rank)
        if isinstance(layers, int) and layers < n_stages:
            return [(f"{n_stages} stages need at least {n_stages} decoder blocks; the model has {layers} (num_hidden_layers)",
                     "lower pp.size or stages_per_rank")]
        return []

    # -- the contract -----------------------------------------------------------------------------

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        import torch.distributed as dist
        from automodel.blocks import checkpoint_blocks

        hf, decoder = decoder_parts(model)
        self.ctx, self.hf, self.decoder = ctx, hf, decoder
        self.pp_mesh = mesh["pp"]
        self.group = self.pp_mesh.get_group()
        self.rank = self.pp_mesh.get_local_rank()
        name, _, self.style = SCHEDULES[self.schedule]
        self.spr = stages_per_rank(self.schedule, self.stages_per_rank)
        self.n_stages = self.size * self.spr
        n_layers = len(decoder.layers)
        if self.split_points:
            self.bounds = explicit_bounds(self.split_points, n_layers, self.n_stages)
        else:
            cfg = hf.config
            per_block = 12 * cfg.hidden_size**2  # attention + MLP weights, roughly
            head = cfg.vocab_size * cfg.hidden_size
            self.bounds = balanced_bounds(n_layers, self.n_stages, last_extra=head / per_block)
        self.mine = [s for s in range(self.n_stages) if stage_owner(s, self.size, self.style) == self.rank]
        self.first, self.last = 0 in self.mine, self.n_stages - 1 in self.mine
        self.tied = bool(getattr(hf.config, "tie_word_embeddings", False)) and hf.lm_head is not None and \
            hf.lm_head.weight is decoder.embed_tokens.weight
        keep_stages(hf, self.bounds, self.mine, self.n_stages, self.tied)
        if self.activation_checkpointing:
            checkpoint_blocks(list(decoder.layers.values()))
        if not any(p.is_meta for p in hf.parameters()):
            hf.to(ctx.device)
        # the tied embeddings' gradient is summed over the ranks of the first and the last stage
        self.tie_group = None
        first_rank, last_rank = stage_owner(0, self.size, self.style), stage_owner(self.n_stages - 1, self.size, self.style)
        if self.tied and first_rank != last_rank:
            if self.size == 2:
                self.tie_group = self.group
            else:  # every rank creates every pair's group, in the same order
                columns = self.pp_mesh.mesh.tolist() if mesh.ndim == 1 else mesh.mesh.reshape(self.size, -1).t().tolist()
                columns = [columns] if mesh.ndim == 1 else columns
                for col in columns:
                    g = dist.new_group([col[first_rank], col[last_rank]])
                    if dist.get_rank() in (col[first_rank], col[last_rank]):
                        self.tie_group = g
        self.schedule_class = name
        self.stage_modules = {s: _Stage(hf, s, self._parts(s)) for s in self.mine}
        hf.forward = self._stage_forward  # the root is called per stage (FSDP2's root hooks run on it)
        self.runners: dict[tuple[int, int, bool], Any] = {}
        self.applied = True
        spans = ", ".join(f"stage {s}: blocks {self.bounds[s]}-{self.bounds[s + 1] - 1}" for s in self.mine)
        ctx.print(f"pp: {self.n_stages} stages over {self.size} ranks, schedule {self.schedule}, "
                  f"{self.microbatches or self.n_stages} micro-batches per step; this pipeline rank: {spans}")
        return model

    def _stage_forward(self, x: Any, *, stage: int, rows: Any) -> Any:
        """One stage's forward on a pipeline micro-batch (``rows`` of the step's batch)."""
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        hf, decoder, batch = self.hf, self.decoder, self.batch
        cfg = hf.config
        h = decoder.embed_tokens(x) if stage == 0 else x
        pos = batch["position_ids"][rows] if "position_ids" in batch else \
            torch.arange(h.shape[1], device=h.device).unsqueeze(0).expand(h.shape[0], -1)
        kwargs = {"config": cfg, "inputs_embeds": h, "attention_mask": batch["attention_mask"][rows] if "attention_mask" in batch else None,
                  "cache": None, "position_ids": pos}
        types = getattr(cfg, "layer_types", None)
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if (types and "sliding_attention" in types) or (types is None and getattr(cfg, "sliding_window", None)):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        default = "sliding_attention" if types is None and "sliding_attention" in masks else "full_attention"
        pe = decoder.rotary_emb(h, position_ids=pos)
        for i in range(self.bounds[stage], self.bounds[stage + 1]):
            h = decoder.layers[str(i)](h, attention_mask=masks[types[i] if types else default],
                                       position_embeddings=pe, position_ids=pos)
        if stage == self.n_stages - 1:
            h = decoder.norm(h)
            if not self.loss.uses_hidden_states:
                h = hf.lm_head(h)
        return h

    def _loss(self, output: Any, rows: Any) -> Any:
        """The schedule's loss on the last stage: the core's loss of these rows; backward of loss x dp_size."""
        batch = {k: v[rows] for k, v in self.batch.items()}
        if self.loss.uses_hidden_states:
            loss = self.loss(batch, hidden_states=output, lm_head_weight=self.hf.lm_head.weight)
        else:
            loss = self.loss(batch, logits=output)
        return loss * self.ctx.dp_size if self.backward else loss

    def _runner(self, mb_rows: int, length: int, n_micro: int, backward: bool) -> Any:
        """The schedule for micro-batches of ``mb_rows`` x ``length`` (stages exchange fixed shapes)."""
        import torch.distributed.pipelining.schedules as schedules
        from torch.distributed.pipelining import PipelineStage

        key = (mb_rows, length, backward)
        if key not in self.runners:
            stages = [PipelineStage(self.stage_modules[s], s, self.n_stages, self.ctx.device, group=self.group) for s in self.mine]
            for stage in stages:  # compute time of this rank's stages (the rest of a step is the bubble)
                for method in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
                    if hasattr(stage, method):
                        setattr(stage, method, self._timed(getattr(stage, method)))
            cls = getattr(schedules, self.schedule_class)
            single = SCHEDULES[self.schedule][1] == 1
            self.runners[key] = cls(stages[0] if single else stages, n_micro, loss_fn=self._loss, scale_grads=False)
        return self.runners[key]

    def forward_backward(self, model: Any, micro: list[dict[str, Any]], loss: Any, ctx: Any, backward: bool = True) -> Any:
        import torch

        if not self.applied:
            return None
        batch = self._pad(micro)
        rows = batch["input_ids"].shape[0]
        n_micro = self.microbatches or self.n_stages
        if not backward:  # validation: pad the rows to a multiple of the micro-batches (padding rows carry no labels)
            batch = self._pad_rows(batch, -rows % n_micro)
            rows = batch["input_ids"].shape[0]
        elif rows % n_micro:
            raise AutomodelError(
                f"parallel.pp.microbatches: {n_micro} micro-batches do not divide the {rows} sequences each pipeline gets "
                f"per step (step_scheduler.global_batch_size / {ctx.dp_size} data-parallel ranks); pick a divisor of {rows}")
        self.batch, self.loss, self.backward = batch, loss, backward
        runner = self._runner(rows // n_micro, batch["input_ids"].shape[1], n_micro, backward)
        idx = torch.arange(rows, device=ctx.device)
        args = (batch["input_ids"],) if self.first else ()
        target = idx if self.last else None
        losses: list[Any] = []  # one per micro-batch, on the last stage (as returned for backward)
        self.busy_s, start = 0.0, time.perf_counter()
        if backward:
            runner.step(*args, target=target, rows=idx, losses=losses)
            self._sync_tied_grads()
            # bubble of this rank = 1 - busy_s / schedule_s (tests/benchmarks/bench_pp.py)
            self.timings.append({"schedule_s": time.perf_counter() - start, "busy_s": self.busy_s})
        else:
            runner.eval(*args, target=target, rows=idx, losses=losses)
        self.batch = None
        loss_sum = torch.zeros((), device=ctx.device)
        if losses:
            loss_sum += torch.stack([x.detach().float() for x in losses]).sum() / (ctx.dp_size if backward else 1)
        # the loss lives on the last stage: give it to every rank of the pipeline (the loop sums ranks / replicas)
        torch.distributed.all_reduce(loss_sum, group=self.group)
        return loss_sum

    def clip_grad_norm(self, params: Any, max_norm: float) -> Any:
        """Clip to the gradient norm over all stages (a tied lm_head counted once, on the first stage)."""
        import torch
        import torch.distributed as dist

        named = params.named() if hasattr(params, "named") else [(str(i), p) for i, p in enumerate(params)]
        tied_copy = self.hf.lm_head.weight if self.tie_group is not None and not self.first else None
        counted = [p.grad for _, p in named if p.grad is not None and p is not tied_copy]
        if counted:
            norm = torch.nn.utils.get_total_norm(counted, 2.0, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        else:
            norm = torch.zeros((), device=self.ctx.device)
        squared = norm.to(torch.float32) ** 2
        dist.all_reduce(squared, group=self.group)
        total = squared.sqrt()
        torch.nn.utils.clip_grads_with_norm_([p for _, p in named], max_norm, total, foreach=True)
        return total

    # -- helpers ----------------------------------------------------------------------------------

    def _timed(self, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.busy_s += time.perf_counter() - start
        return timed

    def _parts(self, stage: int) -> list[Any]:
        parts = [self.decoder.embed_tokens] if stage == 0 else []
        parts += [self.decoder.layers[str(i)] for i in range(self.bounds[stage], self.bounds[stage + 1])]
        if stage == self.n_stages - 1:
            parts += [self.decoder.norm, self.hf.lm_head]
        return parts

    def _sync_tied_grads(self) -> None:
        import torch.distributed as dist

        if self.tie_group is None:
            return
        p = self.decoder.embed_tokens.weight if self.first else self.hf.lm_head.weight
        if p.grad is not None:
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            dist.all_reduce(grad, group=self.tie_group)

    def _pad(self, micro: list[dict[str, Any]]) -> dict[str, Any]:
        """The step's micro-batches as one batch, every row padded (right) to one length, a multiple of
        ``pad_to_multiple``: pad tokens, label -100, attention mask 0, positions counting on."""
        import torch

        longest = max(b["input_ids"].shape[1] for b in micro)
        length = -(-longest // self.pad_to_multiple) * self.pad_to_multiple
        pad_id = getattr(self.hf.config, "pad_token_id", None) or 0
        fill = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
        keys = set(micro[0])
        out: dict[str, list[Any]] = {k: [] for k in keys}
        for b in micro:
            if set(b) != keys:
                raise AutomodelError(f"pp: micro-batches of one step have different columns ({sorted(keys)} vs {sorted(b)})")
            n = length - b["input_ids"].shape[1]
            for k, v in b.items():
                if v.dim() < 2 or v.shape[1] != b["input_ids"].shape[1]:
                    out[k].append(v)
                elif k == "position_ids":
                    last = v[:, -1:]
                    out[k].append(torch.cat([v, last + torch.arange(1, n + 1, device=v.device)], dim=1))
                else:
                    out[k].append(torch.nn.functional.pad(v, (0, n), value=fill.get(k, 0)))
        return {k: torch.cat(v, dim=0) for k, v in out.items()}

    def _pad_rows(self, batch: dict[str, Any], n: int) -> dict[str, Any]:
        import torch

        if n == 0:
            return batch
        out = {}
        for k, v in batch.items():
            extra = v[:1].expand(n, *v.shape[1:]).clone()
            if k == "labels":
                extra.fill_(-100)
            out[k] = torch.cat([v, extra], dim=0)
        return out


def _stage_module(root: Any, index: int, parts: list[Any]) -> Any:
    import torch

    class Stage(torch.nn.Module):
        """What a ``PipelineStage`` runs: stage ``index`` of the (pruned) model ``root``. The root is
        called, not its parts, so a data-parallel wrapper's root hooks (FSDP2) run; its parameters are
        the stage's own blocks (and embeddings / norm / lm_head)."""

        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "root", root)  # not a child: parameters() is this stage's only
            self.index = index
            self.parts = torch.nn.ModuleList(parts)  # shared with the root (zero bubble computes their dW)

        def forward(self, *x: Any, rows: Any) -> Any:
            return self.root(*x, stage=self.index, rows=rows)

    return Stage()


_Stage = _stage_module
