"""Sweep progress: a rich bar with ETA on a terminal, one plain line per checkpoint for CI logs."""

from __future__ import annotations

import logging
import sys
import time

from diag.display import literal, markup_literal

log = logging.getLogger("diag")


class SweepProgress:
    """mode: "auto" (rich when stderr is a terminal, else plain), "rich", "plain" or "quiet"."""

    def __init__(self, mode: str, total: int):
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        if mode not in ("rich", "plain", "quiet"):
            raise ValueError(mode)
        self.mode, self.total = mode, total
        self.count = 0
        self._rich = None
        self._task = None
        self._started = 0.0

    def __enter__(self) -> SweepProgress:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task("checkpoints", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def note(self, text: str) -> None:
        if self.mode == "rich":
            self._rich.console.print(f"[dim]{markup_literal(text)}[/dim]")
        elif self.mode == "plain":
            log.info(literal(text))

    def add(self, count: int, why: str) -> None:
        """``count`` more checkpoints to probe than planned (a staged sweep's full suite)."""
        self.total += count
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)
        self.note(why)

    def start(self, label: str) -> None:
        self._started = time.perf_counter()
        if self._rich is not None:
            self._rich.update(self._task, description=f"probing {markup_literal(label)}")

    def done(
        self, label: str, cached: bool, error: bool = False, seconds: float | None = None
    ) -> None:
        """One more checkpoint finished; ``seconds``: how long probing it took (default: since
        :meth:`start`; a worker elsewhere measures its own)."""
        self.count += 1
        if seconds is None:
            seconds = time.perf_counter() - self._started
        how = "error" if error else "cached" if cached else f"{seconds:.1f} s"
        if self._rich is not None:
            self._rich.advance(self._task)
            self._rich.console.print(f"  {markup_literal(label)}: {how}")
        elif self.mode == "plain":
            log.info("[%d/%d] %s: %s", self.count, self.total, literal(label), how)

    def probe_callback(self, label: str):
        """A ``progress(message)`` callable for the probe suite (None when not drawing a bar)."""
        if self._rich is None:
            return None

        def update(message: str) -> None:
            self._rich.update(
                self._task, description=f"{markup_literal(label)}: {markup_literal(message)}"
            )

        return update
