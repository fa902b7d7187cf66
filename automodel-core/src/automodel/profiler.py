"""The ``profile:`` section: torch.profiler over a window of training steps (off by default).

    profile:
      start_step: 5        # the first profiled step (1-based); profiling is off while this is unset
      num_steps: 3         # steps in the window
      memory: true         # allocations in the trace + a memory snapshot (CUDA) / memory timeline (CPU)
      ranks: [0]           # which ranks profile: a list of ranks, or "all"

Each profiling rank writes, under ``<output_dir>/profile/`` (or ``dir``):

* ``rank<R>.steps<A>-<B>.pt.trace.json``: a Chrome trace. Open it at https://ui.perfetto.dev, in
  ``chrome://tracing``, or with TensorBoard's profiler plugin (``pip install torch-tb-profiler``;
  ``tensorboard --logdir <output_dir>/profile``).
* ``rank<R>.summary.txt``: the operator table (``key_averages``), the heaviest first.
* with ``memory: true``: on CUDA ``rank<R>.memory_snapshot.pickle`` (drag it onto
  https://pytorch.org/memory_viz); on CPU ``rank<R>.memory_timeline.json`` (allocated bytes per category
  over time, from the profiler's memory profile; CPU has no allocator snapshot) and allocation events in
  the trace.

When the section is off the loop holds ``None`` and pays one ``is None`` test per step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class Profile:
    """The ``profile:`` section. Profiling is on when ``start_step`` is set."""

    start_step: int | None = None
    num_steps: int = 3
    memory: bool = False
    ranks: list[int] | Literal["all"] = field(default_factory=lambda: [0])
    record_shapes: bool = False
    with_stack: bool = False
    dir: str | None = None
    row_limit: int = 15

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Value checks, run by ``automodel validate``."""
        out = []
        start = args.get("start_step")
        if isinstance(start, int) and start < 1:
            out.append(("start_step", f"must be >= 1 (steps count from 1), got {start}", "e.g. 5: skip the first, slower steps"))
        n = args.get("num_steps")
        if isinstance(n, int) and n < 1:
            out.append(("num_steps", f"must be >= 1, got {n}", "3 to 5 steps make a readable trace"))
        if start is None and any(k in args for k in ("num_steps", "memory", "ranks", "record_shapes", "with_stack", "dir")):
            out.append(("start_step", "is not set, so profiling is off although other profile keys are",
                        "set profile.start_step (the first profiled step, e.g. 5) to turn it on, or remove the profile section"))
        ranks = args.get("ranks")
        if isinstance(ranks, list) and any(not isinstance(r, int) or isinstance(r, bool) or r < 0 for r in ranks):
            out.append(("ranks", f"must be a list of ranks (integers >= 0) or 'all', got {ranks!r}", "e.g. [0]"))
        return out


class Profiler:
    """Runs ``torch.profiler`` from step ``start_step`` through ``start_step + num_steps - 1`` on this rank."""

    def __init__(self, spec: Profile, ctx: Any):
        self.spec, self.ctx = spec, ctx
        self.first, self.last = spec.start_step, spec.start_step + spec.num_steps - 1
        self.dir = Path(spec.dir) if spec.dir else Path(ctx.output_dir) / "profile"
        self.prof: Any = None
        self.marker: Any = None  # record_function("ProfilerStep#N") of the step being profiled
        self.cuda_memory = False
        self.files: list[Path] = []

    @classmethod
    def create(cls, section: dict[str, Any] | None, ctx: Any, resumed_step: int = 0) -> Profiler | None:
        """A profiler for this rank, or ``None`` (off, another rank, or the window already passed)."""
        spec = Profile(**(section or {}))
        if spec.start_step is None:
            return None
        if spec.ranks != "all" and ctx.rank not in spec.ranks:
            return None
        last = spec.start_step + spec.num_steps - 1
        if last <= resumed_step or (ctx.total_steps is not None and spec.start_step > ctx.total_steps):
            ctx.print(f"profile: steps {spec.start_step}-{last} are outside this run's steps "
                      f"{resumed_step + 1}-{ctx.total_steps}; nothing is profiled")
            return None
        profiler = cls(spec, ctx)
        if spec.start_step <= resumed_step + 1:  # the window starts with the first step of this run
            profiler.first = resumed_step + 1
            profiler.start()
        return profiler

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.ctx.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        memory = self.spec.memory
        if memory and self.ctx.device.type == "cuda":
            torch.cuda.memory._record_memory_history(max_entries=200_000)
            self.cuda_memory = True
        # the CPU memory timeline needs shapes and stacks to categorize allocations
        self.prof = profile(activities=activities, profile_memory=memory, record_shapes=self.spec.record_shapes or memory,
                            with_stack=self.spec.with_stack or memory)
        self.prof.start()
        self._mark(self.first)

    def _mark(self, step: int | None) -> None:
        """Close the current step's range in the trace and (``step``) open the next one."""
        from torch.profiler import record_function

        if self.marker is not None:
            self.marker.__exit__(None, None, None)
            self.marker = None
        if step is not None:
            self.marker = record_function(f"ProfilerStep#{step}")
            self.marker.__enter__()

    def step(self, step: int) -> None:
        """Called after optimizer step ``step``: starts before ``start_step``, stops after the last one."""
        if self.prof is None:
            if step == self.first - 1:
                self.start()
            return
        if step >= self.last:
            self.stop(step)
        else:
            self._mark(step + 1)

    def stop(self, step: int) -> None:
        import torch

        self._mark(None)
        prof, self.prof = self.prof, None
        prof.stop()
        self.dir.mkdir(parents=True, exist_ok=True)
        rank = self.ctx.rank
        trace = self.dir / f"rank{rank}.steps{self.first}-{step}.pt.trace.json"
        prof.export_chrome_trace(str(trace))
        self.files.append(trace)
        on_gpu = self.ctx.device.type == "cuda"
        sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=self.spec.row_limit)
        summary = self.dir / f"rank{rank}.summary.txt"
        summary.write_text(f"steps {self.first}-{step}, rank {rank}, device {self.ctx.device}\n{table}\n")
        self.files.append(summary)
        if self.cuda_memory:
            snapshot = self.dir / f"rank{rank}.memory_snapshot.pickle"
            torch.cuda.memory._dump_snapshot(str(snapshot))
            torch.cuda.memory._record_memory_history(enabled=None)
            self.cuda_memory = False
            self.files.append(snapshot)
        elif self.spec.memory:
            timeline = self.dir / f"rank{rank}.memory_timeline.json"
            try:
                with warnings.catch_warnings():  # deprecated for CUDA (snapshots replace it); CPU has nothing else
                    warnings.simplefilter("ignore", FutureWarning)
                    prof.export_memory_timeline(str(timeline), device=str(self.ctx.device))
                self.files.append(timeline)
            except Exception as e:  # noqa: BLE001 - the trace is written; the timeline is a bonus
                print(f"profile: rank {rank}: no memory timeline ({type(e).__name__}: {e})", flush=True)
        print(f"profile: rank {rank}: steps {self.first}-{step} -> {', '.join(str(f) for f in self.files)} "
              f"(open the trace at https://ui.perfetto.dev)", flush=True)

    def close(self) -> None:
        """End of the run: a window still open (the run ended or stopped inside it) is written as it is."""
        if self.prof is not None:
            self.stop(self.ctx.train_state.step if self.ctx.train_state is not None else self.last)
