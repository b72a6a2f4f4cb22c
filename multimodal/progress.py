"""Progress of long jobs where nobody watches a terminal (nohup, cron, CI logs): one line at a bounded rate with
done / total, rate and ETA, instead of a bar that a log file receives as carriage returns or only when it ends.

On a terminal the jobs keep their bars (tqdm, Lightning's); :func:`progress` picks. No torch import: the light
runtime uses it too. ``MULTIMODAL_PROGRESS_SECONDS`` sets the least time between two lines (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

INTERVAL_VARIABLE = "MULTIMODAL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is a terminal, where a redrawn bar is the better display."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def interval() -> float:
    """Seconds between two progress lines (``MULTIMODAL_PROGRESS_SECONDS``; 0 writes every update)."""
    value = os.environ.get(INTERVAL_VARIABLE, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``: how people read an ETA."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLog:
    """Counts work done and writes ``desc: done/total (pct%) rate unit/s, elapsed m:ss, ETA m:ss`` lines.

    The first update and the close always write; between them at most one line each :func:`interval` seconds.
    The same methods as a tqdm bar (``update``, ``close``, context manager), so jobs use either.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.start = time.monotonic()
        self.last: float | None = None
        self.every = interval()

    def update(self, n: float = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.last is None or now - self.last >= self.every:
            self.write(now)

    def reset(self, total: float | None = None, desc: str | None = None) -> None:
        """Start counting again (a new epoch or stage) without losing the bounded rate."""
        self.total, self.desc = total, desc or self.desc
        self.done, self.start, self.last = 0.0, time.monotonic(), None

    def close(self) -> None:
        if self.done and self.last is not None:
            self.write(time.monotonic())

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: {self.done:g}"
        if self.total:
            head += f"/{self.total:g} ({100 * self.done / self.total:.0f}%)"
        text = f"{head}, {rate:.3g} {self.unit}/s, elapsed {duration(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {duration((self.total - self.done) / rate)}"
        return text

    def write(self, now: float) -> None:
        self.last = now
        print(self.line(now), file=self.stream, flush=True)

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: float | None, desc: str, unit: str = "it", shown: bool = True) -> Any:
    """A tqdm bar on a terminal, a :class:`ProgressLog` elsewhere; a disabled bar when not ``shown``."""
    if shown and not on_terminal():
        return ProgressLog(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not shown, dynamic_ncols=True)
