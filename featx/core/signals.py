"""Stopping on SIGTERM and SIGINT without losing finished work.

A cluster ends a job with SIGTERM and kills it with SIGKILL a little later (SLURM,
Kubernetes); Ctrl-C sends SIGINT. Inside :func:`stopping` (an extraction runs in one)
such a signal raises :class:`~.errors.Interrupted` in the main thread, so the work stops
where it is, commits what it has finished and says what it kept. Once that commit has
begun (:func:`held` with ``then_raise=False``), further signals are only noted: they do
not cut it short (SIGKILL still stops at once).

Nothing is installed on import, nor anywhere but in the main thread, nor over a handler
someone else set (a scheduler's requeue hook, say): only where a signal's handler is
Python's own default, and only for the duration of the block. :func:`held` puts the
signal off while a piece of bookkeeping that must not be torn runs; so does the hand-over
of a batch from a decoding process. Processes forked inside the block (DataLoader
workers) take the signals as they would have without featx.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Interrupted

STOP = (signal.SIGTERM, signal.SIGINT)
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)
_received: int | None = None  # the first stop signal inside the block
_pending = False  # received inside held(), not raised yet
_stopping = False  # the work is committing what it finished: signals are only noted
_held = 0
_owner = 0  # the process that installed the handlers
_previous: dict = {}  # and the handlers they replaced


def _handler(signum: int, frame) -> None:
    global _received, _pending
    if os.getpid() != _owner:  # a process forked inside the block (a DataLoader worker): as before
        if _previous.get(signum) is signal.default_int_handler:
            signal.default_int_handler(signum, frame)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _received is None:
        _received = signum
    elif _stopping:
        return
    if _held or _handing_over(frame):
        _pending = True
    else:  # again on a later signal, should the first be swallowed on its way (in a __del__, say)
        raise Interrupted(_received)


# Where the main thread takes a batch's tensors from a decoding process over a socket: torn
# there, the handshake makes the other process print a traceback. The signal is raised
# by check() (the batch loop's next turn) or at the end of the next held() block.
_HANDOVER = ("multiprocessing/reduction.py", "multiprocessing/reductions.py",
             "multiprocessing/resource_sharer.py")


def _handing_over(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.replace(os.sep, "/").endswith(_HANDOVER):
            return True
        frame = frame.f_back
    return False


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def received() -> int | None:
    """The stop signal received inside :func:`stopping`, if any."""
    return _received


def check() -> None:
    """Raise :class:`~.errors.Interrupted` if a stop signal came (for a loop to stop on
    one that was put off, or that some code on its way swallowed)."""
    if _received is not None:
        raise Interrupted(_received)


@contextmanager
def stopping() -> Iterator[None]:
    """Inside, SIGTERM and SIGINT raise :class:`~.errors.Interrupted` in the main thread,
    where their handlers are Python's defaults; the handlers are restored after. A
    nested block leaves the outer one's handlers in place."""
    global _received, _pending, _stopping, _held, _owner, _previous
    ours = {s: h for s in STOP if _main_thread() and (h := signal.getsignal(s)) in _DEFAULTS}
    if not ours:
        yield
        return
    before = _received, _pending, _stopping
    _received, _pending, _stopping, _owner, _previous = None, False, False, os.getpid(), ours
    hook = sys.unraisablehook
    try:
        sys.unraisablehook = _quiet(hook)
        for s in ours:
            signal.signal(s, _handler)
        yield
    finally:
        _held += 1  # a signal now comes too late to stop anything
        try:
            for s, h in ours.items():
                signal.signal(s, h)
        finally:
            _held -= 1
            sys.unraisablehook = hook
            _received, _pending, _stopping = before


def _quiet(hook):
    """``sys.unraisablehook`` that says nothing of an Interrupted raised where Python
    cannot raise it (a ``__del__``, a callback after ``fork``): the work stops at its
    next :func:`check`."""

    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            hook(unraisable)

    return quiet


@contextmanager
def held(*, then_raise: bool = True) -> Iterator[None]:
    """Inside, a stop signal is noted, not raised, and so is the end of a child process
    (SIGCHLD: torch raises an error in the main thread when a DataLoader worker is
    killed, as a SIGTERM to a whole job step does). After the block, with ``then_raise``,
    the stop signal is raised and the child's end reported to the handler it was put off
    from. Without, the caller is stopping: they are dropped, and so are later signals."""
    global _held, _pending, _stopping
    if not _main_thread():
        yield
        return
    chld = getattr(signal, "SIGCHLD", None)
    previous = signal.getsignal(chld) if chld is not None else None
    ended: list = []
    _held += 1
    _stopping = _stopping or not then_raise
    try:
        if callable(previous):
            signal.signal(chld, lambda signum, frame: ended.append(frame))
        yield
    finally:
        if callable(previous):
            signal.signal(chld, previous)
        _held -= 1
    if _held:
        return
    pending, _pending = _pending, False
    if then_raise and pending:
        raise Interrupted(_received)
    if then_raise and ended:
        previous(chld, ended[-1])
