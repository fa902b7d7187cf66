"""``python -m automodel._torchrun ARGS``: torchrun as the local launcher runs it.

Two differences from ``python -m torch.distributed.run``:

* SIGUSR1 is ignored in this process (the launcher forwards it to the workers; torchrun's default would
  kill it and orphan them). The workers inherit the ignore only until the training loop installs its
  own handlers.
* SIGINT (Ctrl-C in the terminal) does nothing here: the launcher forwards it to the workers, whose first
  one means "checkpoint and stop" (torchrun would instead signal them itself, then kill them after its
  shutdown timeout). A Python-level no-op handler, not SIG_IGN, so that the workers start with the
  default Ctrl-C behaviour.
* When a worker fails, torchrun's 30-line ``ChildFailedError`` report (the workers' own output is
  already above it) becomes one line, and the exit code is the failed worker's own (2 for a config
  error, 75 for a preemption stop) instead of always 1.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    # torchrun (re)installs its handler for every signal in --signals_to_handle (env PET_SIGNALS_TO_HANDLE)
    handled = os.environ.get("PET_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT").split(",")
    os.environ["PET_SIGNALS_TO_HANDLE"] = ",".join(s for s in handled if s.strip() != "SIGINT")
    sys.argv[0] = "torchrun"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except (KeyboardInterrupt, SignalException) as e:  # Ctrl-C / SIGTERM: torchrun stopped the workers
        signum = int(getattr(e, "sigval", signal.SIGINT))
        print(f"torchrun: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        # Exit code 1 is what a rank gets when a peer leaves in the middle of a collective; a rank that
        # chose its code (2 config error, 75 preemption) or was killed by a signal is the cause.
        chosen = [(r, f) for r, f in sorted(e.failures.items()) if f.exitcode != 1]
        if chosen:
            rank, failure = chosen[0]
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by a signal
        others = sorted(r for r in e.failures if r != rank)
        also = f" (also failed: rank {', '.join(map(str, others))})" if others else ""
        print(f"torchrun: worker rank {rank} exited with code {failure.exitcode}{also}; its output is above",
              file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
