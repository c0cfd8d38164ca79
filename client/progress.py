"""A progress line for long work: count, rate and ETA, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Redraws one line on a terminal; prints a line every ``interval`` seconds elsewhere."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "entries",
        stream: TextIO | None = None,
        interval: float = 1.0,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self._tty = self.stream.isatty()
        self._start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        """Record progress; draw at most every ``interval`` seconds (a tenth of it on a tty)."""
        self.done = done
        now = time.monotonic()
        if now - self._last >= (self.interval / 10 if self._tty else self.interval):
            self._last = now
            self._draw(now, final=False)

    def finish(self) -> None:
        """Draw the final line."""
        self._draw(time.monotonic(), final=True)

    def _draw(self, now: float, *, final: bool) -> None:
        if not self.enabled:
            return
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        if final:
            tail = f"done in {_duration(elapsed)}"
        elif rate > 0:
            tail = f"ETA {_duration((self.total - self.done) / rate)}"
        else:
            tail = "ETA ?"
        text = (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:5.1f}%) "
            f"{rate:,.0f}/s {tail}"
        )
        if self._tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
