"""A second lane for the demo on a multi-core CPU: one call run in another process, on half of the
cores, while this process trains on the others.

Why: on 2 cores a second thread speeds one job up far less than a second job runs beside it
(measured on this project's 2-core machine, SmolLM2-135M: a LoRA step 2.02 s on 1 thread against
1.57 s on 2; 16 answers of 48 tokens 4.4 s against 4.0 s; two single-thread jobs side by side
each lose about 10 %). Training gives the same weights on 1 thread as on 2 (checked bit for bit:
420 of 420 LoRA tensors after 6 steps), so the runs are the ones a sequential demo trains.

The side call's output goes to a log file, shown under the main output at each hand-over (the
demo waits for the rehearsal answers before its second run) and at the end. A side call that
fails costs nothing but its time: what it would have cached is computed later, where it is
needed, and the demo says so in one line.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from pathlib import Path

log = logging.getLogger("diag")


def lanes() -> tuple[int, int] | None:
    """(threads for this process, threads for the side process) on a CPU with 2 or more cores;
    None where the demo runs one thing at a time (one core, or a GPU that does the work)."""
    import torch

    from diag.backend.loading import default_device

    cores = torch.get_num_threads()
    if cores < 2 or default_device() != "cpu":
        return None
    return cores - cores // 2, cores // 2


class Beside:
    """``with Beside(what, split, log_path, fn, *args) as side:`` runs ``fn(events, *args)`` in a
    second process (``split[1]`` threads) while the block runs here on ``split[0]``; leaving the
    block waits for it. ``events``: {name: multiprocessing Event} for each of ``events``, shared
    with the block (:meth:`set`, :meth:`wait`). ``fn`` and ``args`` must pickle (a module-level
    function). The side's output is replayed here at each :meth:`wait` and at the end."""

    def __init__(self, what: str, split: tuple[int, int], log_path: Path, fn, *args, events=()):
        self.what, self.split, self.log_path = what, split, Path(log_path)
        self.fn, self.args, self.names = fn, args, tuple(events)
        self.events: dict = {}
        self.process = None
        self.threads = 0
        self.replayed = 0  # lines of the side's log already shown

    def __enter__(self) -> Beside:
        import torch

        self.threads = torch.get_num_threads()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("", encoding="utf-8")
        context = multiprocessing.get_context("spawn")
        self.events = {name: context.Event() for name in self.names}
        self.process = context.Process(
            target=_side,
            args=(str(self.log_path), self.split[1], self.fn, (self.events, *self.args)),
            daemon=True,  # never outlives the demo
        )
        self.process.start()
        torch.set_num_threads(self.split[0])
        return self

    def set(self, name: str) -> None:
        """Tell the side process that ``name`` happened here."""
        self.events[name].set()

    def wait(self, name: str) -> None:
        """Wait until the side process says ``name`` happened (or it ended without saying so)."""
        while not self.events[name].wait(timeout=1.0):
            if not self.process.is_alive():
                break
        self._replay()

    def __exit__(self, kind, exc, tb) -> None:
        import torch

        try:
            if kind is not None:  # the block failed or was interrupted: the side work is moot
                self.process.terminate()
                self.process.join(timeout=10)
                return
            self.process.join()
            self._replay()
            if self.process.exitcode != 0:
                log.warning(
                    "%s beside the training stopped (exit code %s, log: %s); what it did not "
                    "finish is done next, in the usual order",
                    self.what,
                    self.process.exitcode,
                    self.log_path,
                )
        finally:
            torch.set_num_threads(self.threads)

    def _replay(self) -> None:
        """Show the side's log lines not shown yet (whole lines only)."""
        text = self.log_path.read_text("utf-8", "replace") if self.log_path.is_file() else ""
        lines = text.split("\n")[:-1]  # the last piece is an unfinished line, or empty
        for line in lines[self.replayed :]:
            if line:
                log.info("  [beside] %s", line)
        self.replayed = max(self.replayed, len(lines))


class Alone:
    """What the demo runs with when nothing works beside it: :class:`Beside`'s interface, doing
    nothing."""

    def __enter__(self) -> Alone:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def set(self, name: str) -> None:
        return None

    def wait(self, name: str) -> None:
        return None


def _side(log_path: str, threads: int, fn, args) -> None:
    """The side process: its output to ``log_path``, ``threads`` CPU threads, then ``fn(*args)``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the demo's: it stops this process
    with open(log_path, "a", encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    # the streams stay open for the life of this process, as sys.stdout/sys.stderr always are
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    import torch

    from diag.errors import DiagError

    torch.set_num_threads(threads)
    try:
        fn(*args)
    except DiagError as exc:
        log.error("%s", exc)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 -- the side lane's boundary: one line in its log,
        # and the demo does the same work again in its own process, where an error shows in full
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        log.error("%s: %s", type(exc).__name__, first)
        sys.exit(1)
