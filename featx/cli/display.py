"""How the command line shows messages and progress: the library's ``featx`` log
records as plain lines on stderr, and progress as a tqdm bar on a terminal or, when
stderr is a file or a pipe, one line when a stage starts and one when it ends (a bar
redrawn in a log file is kilobytes of carriage returns)."""
from __future__ import annotations

import logging
import sys
import time

from ..core import progress


class _StderrHandler(logging.Handler):
    """Each record as one line on whatever ``sys.stderr`` is when it is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never stop the work
            self.handleError(record)


def _tqdm_bar(total: int, desc: str, unit: str, initial: int, transient: bool) -> progress.Bar:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit == "B",
                leave=not transient, file=sys.stderr, smoothing=0.1)


class _StageLines(progress.Bar):
    """A stage's start and end as two log lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, transient: bool):
        self.desc, self.unit, self.done, self.start = desc, unit, initial, time.monotonic()
        self.log = logging.getLogger("featx")
        self.log.info("%s: %s %s to do", desc, f"{total - initial:,}", unit)

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        if self.start is not None:
            self.log.info("%s: %s %s done in %.1f s", self.desc, f"{self.done:,}", self.unit,
                          time.monotonic() - self.start)
            self.start = None


def shown(speak: bool) -> tuple[logging.Handler | None, progress.Display | None]:
    """A log handler and a progress display for this process (none for a silent one)."""
    if not speak:
        return None, None
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler, (_tqdm_bar if sys.stderr.isatty() else _StageLines)
