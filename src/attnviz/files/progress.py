"""Live progress of long runs on stderr — only when stderr is a terminal.

    with Progress(quiet) as progress:                 # does nothing when piped or --quiet
        result = analyze(text, weights=..., layer="all", progress=progress)
        plot.write_heatmaps(result, out, progress=progress)
        progress.summary(f"Wrote {n} files to {out}")

The library never imports rich for this: it takes a plain callback
``progress(stage, done, total)`` ("Reading weights" 3/12, "Forward pass" 7/12,
"Drawing" 96/157) and calls it after each step. ``Progress`` is such a callback: one bar
per stage while it runs (erased when done), then a single summary line with the time of
each stage. When stderr is not a terminal, or with ``--quiet``, it prints nothing at all,
so pipes, logs and scripts see exactly what they saw before.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol

from attnviz.core.words import counted


class ProgressCallback(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython with a display front end)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Progress:
    """A progress callback that draws rich bars on stderr (see the module docstring).

    ``enabled``: None decides from the terminal and ``quiet``; True/False forces it (tests).
    ``console``: where to draw (default: a rich Console on stderr).
    """

    def __init__(self, quiet: bool = False, *, enabled: bool | None = None, console=None):
        self.enabled = (not quiet and stderr_is_terminal()) if enabled is None else enabled
        self.console = console
        self.stages: dict[str, float] = {}  # stage -> seconds spent, in order of first use
        self._bars = None
        self._tasks: dict[str, int] = {}
        self._summary: str | None = None
        self._start = self._last = time.perf_counter()

    def __enter__(self) -> Progress:
        self._start = self._last = time.perf_counter()
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bars

            self.console = self.console or Console(stderr=True)
            self._bars = Bars(TextColumn("{task.description:<16}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                              transient=True)
            self._bars.start()
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        # A stage starts when the step before it ended: its first step is counted too.
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - self._last)
        self._last = now
        if self._bars is None:
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._bars.add_task(stage, total=total)
        self._bars.update(self._tasks[stage], completed=done, total=total)

    def summary(self, text: str) -> None:
        """The line printed when the run ends (followed by the time of each stage)."""
        self._summary = text

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        if self.enabled and exc_type is None:
            from rich.text import Text

            self.console.print(Text(self.summary_line()), highlight=False)

    def summary_line(self) -> str:
        """'Wrote 157 files to out in 9.8 s (reading weights 0.4 s, forward pass 2.9 s, ...)'."""
        total = time.perf_counter() - self._start
        parts = ", ".join(f"{stage.lower()} {seconds:.1f} s" for stage, seconds in self.stages.items())
        return f"{self._summary or 'Done'} in {total:.1f} s" + (f" ({parts})" if parts else "")


# ------------------------------------------------------------------ scan's own bar


def scan_progress_kind(forced: bool, quiet: bool) -> str | None:
    """``"bar"`` on a terminal, ``"lines"`` when forced onto a pipe, else None."""
    if quiet:
        return None
    if sys.stderr is not None and sys.stderr.isatty():
        return "bar"
    return "lines" if forced else None


class ScanProgress:
    """Prompts done, tokens/s and time left, on stderr: a rich bar on a terminal, a plain
    line at most once a second when forced onto a pipe, nothing otherwise."""

    def __init__(self, n_prompts: int, n_tokens: int, show: str | None):
        self.n_prompts, self.n_tokens, self.show = n_prompts, n_tokens, show
        self.done_prompts = self.done_tokens = 0
        self.started = self.last_line = time.perf_counter()
        self.bar = None

    def __enter__(self):
        if self.show == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("scanning"), BarColumn(),
                TextColumn("{task.fields[prompts]}/{task.fields[n_prompts]} prompts"),
                TextColumn("{task.fields[rate]} tokens/s"), TimeElapsedColumn(),
                TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("scan", total=self.n_tokens, prompts=0,
                                          n_prompts=self.n_prompts, rate="—")
        return self

    def advance(self, n_prompts: int, n_tokens: int) -> None:
        self.done_prompts += n_prompts
        self.done_tokens += n_tokens
        now = time.perf_counter()
        rate = self.done_tokens / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, advance=n_tokens, prompts=self.done_prompts, rate=f"{rate:,.0f}")
        elif self.show == "lines" and (now - self.last_line >= 1.0 or self.done_prompts == self.n_prompts):
            self.last_line = now
            left = (self.n_tokens - self.done_tokens) / max(rate, 1e-9)
            sys.stderr.write(f"scanned {self.done_prompts}/{counted(self.n_prompts, 'prompt')}, "
                             f"{rate:,.0f} tokens/s, {left:.0f} s left\n")
            sys.stderr.flush()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
