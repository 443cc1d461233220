"""`caption`'s progress on stderr: done/total, images/s (files/s when the run has videos or
audio files), ETA and errors.

On an interactive terminal a rich progress bar, redrawn in place; otherwise (a log file, a pipe,
CI, TERM=dumb) one plain line every few seconds and a last one at the end, so a log gets a
readable record instead of a screenful of cursor movements.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

PLAIN_INTERVAL_S = 5.0


class CaptionProgress(Protocol):
    """What the caption loop reports to; a context manager that draws the last state on exit."""

    def step(self, failed: bool) -> None: ...

    def __enter__(self) -> CaptionProgress: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def open_progress(total: int, stream: TextIO, unit: str = "images") -> CaptionProgress:
    """A bar when `stream` is an interactive terminal (rich's test: a tty whose TERM is not
    dumb), plain lines otherwise. Nothing to caption: nothing drawn."""
    console = Console(file=stream)
    if total and console.is_interactive:
        return BarProgress(total, console, unit)
    return PlainProgress(total, stream, unit=unit)


class PlainProgress:
    """`12/100 images | 3.4 images/s | ETA 0:00:26 | 1 errors`, every few seconds."""

    def __init__(
        self, total: int, stream: TextIO, interval: float = PLAIN_INTERVAL_S, unit: str = "images"
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream
        self.interval = interval
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._written = self.started

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.total:
            self.write()

    def step(self, failed: bool) -> None:
        self.done += 1
        self.errors += failed
        now = time.monotonic()
        if now - self._written >= self.interval and self.done < self.total:
            self._written = now
            self.write()

    def write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        return (
            f"{self.done}/{self.total} {self.unit} | {rate:.1f} {self.unit}/s | "
            f"ETA {clock(left)} | {self.errors} errors"
        )


class BarProgress:
    """rich's bar: `━━━━━━╺━━━━ 12/100 images 3.4 images/s ETA 0:00:26 1 errors`. rich redraws
    it from its own thread a few times a second, and keeps the final state on screen."""

    def __init__(self, total: int, console: Console, unit: str = "images") -> None:
        self._bar = RichProgress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            ImagesPerSecondColumn(unit),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[errors]} errors"),
            console=console,
            # Lines the in-process gateway logs go above the bar instead of through it.
            redirect_stderr=True,
        )
        self._task = self._bar.add_task("caption", total=total, errors=0)
        self._errors = 0

    def __enter__(self) -> BarProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def step(self, failed: bool) -> None:
        self._errors += failed
        self._bar.update(self._task, advance=1, errors=self._errors)


class ImagesPerSecondColumn(ProgressColumn):
    """rich's speed over its recent window (what the ETA uses too); the whole run's once done."""

    def __init__(self, unit: str = "images") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"? {self.unit}/s" if speed is None else f"{speed:.1f} {self.unit}/s")


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
