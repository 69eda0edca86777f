"""Progress of long work, shown only where someone asked to see it.

The library never draws: a long loop reports through :func:`bar`, which does nothing
unless the caller installed a display with :func:`showing`. The command line shows a
tqdm bar on a terminal and one log line per stage in a log file (see ``featx.cli``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Bar:
    """A progress bar that shows nothing; displays implement the same two methods."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# (total, desc, unit, initial, transient) -> a Bar
Display = Callable[..., Bar]
_display: ContextVar[Display | None] = ContextVar("featx_progress_display", default=None)


def bar(total: int, desc: str, *, unit: str = "img", initial: int = 0, transient: bool = False) -> Bar:
    """A bar for ``total`` units of work named ``desc``; ``transient`` bars (one epoch of
    many) may vanish when closed."""
    display = _display.get()
    if display is None:
        return Bar()
    return display(total=total, desc=desc, unit=unit, initial=initial, transient=transient)


@contextmanager
def showing(display: Display | None) -> Iterator[None]:
    """Show the progress of the work done inside the block with ``display`` (None: show nothing)."""
    token = _display.set(display)
    try:
        yield
    finally:
        _display.reset(token)
