"""Progress reporting for every long loop: a tqdm bar on a terminal, plain lines in a log file or pipe.

tqdm redraws its bar with carriage returns, which a redirected run (``torchrun.py --demo > log``) would keep as one
long line per loop. So a bar is drawn only when the stream is a terminal; otherwise a loop that asks for lines
prints one line per tenth of its total (with the elapsed time), and one that does not (a training epoch, which
prints its own summary line) stays silent.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, TextIO

LINES_PER_LOOP = 10


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, lines: bool = True, leave: bool = True, stream: TextIO | None = None):
    """A progress reporter with tqdm's ``update(n)``, ``set_postfix(**kw)``, ``close()`` and iteration.

    enabled: False reports nothing. lines: whether a non-terminal stream gets plain lines (else nothing).
    stream: where to write (default sys.stderr, tqdm's)."""
    stream = sys.stderr if stream is None else stream
    if enabled and _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=stream if enabled and lines else None)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):          # no isatty, or a closed stream
        return False


class LineProgress:
    """Counts items and writes one line per tenth of ``total`` (none when stream is None or total unknown)."""

    def __init__(self, iterable=None, *, total: int | None, desc: str, unit: str, stream: TextIO | None):
        self.iterable, self.total, self.desc, self.unit, self.stream = iterable, total, desc, unit, stream
        self.n, self.start, self.next_line = 0, time.perf_counter(), 1

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return len(self.iterable)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.stream is None or not self.total:
            return
        tenths = min(LINES_PER_LOOP, self.n * LINES_PER_LOOP // self.total)
        if tenths >= self.next_line:
            self.next_line = tenths + 1
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total} %), "
                              f"{elapsed:.1f} s\n")
            self.stream.flush()

    def set_postfix(self, *args, **kwargs) -> None:
        """Accepted for tqdm compatibility; plain lines carry no postfix."""

    def close(self) -> None:
        """Nothing to release (tqdm compatibility)."""
