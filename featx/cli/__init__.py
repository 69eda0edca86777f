"""The ``featx`` command line: the only part of featx that parses arguments and prints.

:mod:`.parser` declares the arguments (and imports nothing heavy, so help, version and
argument errors answer at once), :mod:`.commands` runs each command through the
library's public functions (:mod:`featx.api`), :mod:`.stores` is ``featx cache``, and
:mod:`.display` shows the library's log records and progress. A library error that
names a parameter (``device='tpu': ...``) is shown as its flag (``--device tpu: ...``).
An extraction stopped by SIGTERM or Ctrl-C says what it kept and exits with 128 + the
signal's number (143, 130), as a process that signal ended would. Before anything loads
torch or numpy, the command sets their thread counts and waiting
(:mod:`featx.core.threads`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys

from ..core import threads
from ..core.errors import FeatxError, Interrupted, ParameterError
from .parser import parser

UNDER_TORCHRUN = ("extract", "run", "finetune")


def main(argv: list[str] | None = None) -> int:
    status = _main(argv)
    from ..core import distributed

    if distributed.launched():
        _leave(status)
    return status


def _leave(status: int) -> None:
    """End a process that torchrun started, once its work is committed and its group left,
    without the interpreter's teardown: destroying C++ objects at exit (which one, the
    looped runs did not show) aborted a finished process now and then
    ("terminate called without an active exception", SIGABRT, no Python frame left: twice
    in about 90 looped runs of a test in tests/core/test_distributed.py), and torchrun failed the whole
    job. Every file featx writes is closed by then; only the streams need flushing."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    threads.prepare()  # before torch and numpy load: they read it once
    from ..core import distributed
    from . import commands, stores

    command = stores.cmd_cache if args.command == "cache" else getattr(commands, f"cmd_{args.command}")
    try:
        if not distributed.launched():
            with _speaking(True):
                return command(args)
        if args.command not in UNDER_TORCHRUN:
            raise FeatxError(f"{args.command}: not a command that runs under torchrun "
                             f"({', '.join(UNDER_TORCHRUN[:-1])} and {UNDER_TORCHRUN[-1]} do)")
        # under torchrun: every process runs the command, the first one speaks for all
        clean = False
        try:
            w = distributed.init_from_env(getattr(args, "device", "auto"))
            with contextlib.ExitStack() as quiet:
                if not w.is_main:
                    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
                with _speaking(w.is_main):
                    status = command(args)
            clean = True
            return status
        finally:
            distributed.shutdown(clean)
    except FeatxError as exc:
        print(f"featx: error: {exc.as_flag() if isinstance(exc, ParameterError) else exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:  # what the extraction kept (featx.core.signals)
        # one write of the whole line: under torchrun every process says this at once
        sys.stderr.write(f"featx: {exc}\n")
        sys.stderr.flush()
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _speaking(speak: bool):
    """The featx logger's records and the library's progress shown on stderr (or not)."""
    from ..core import progress
    from .display import shown

    handler, display = shown(speak)
    logger = logging.getLogger("featx")
    level = logger.level
    if handler is not None:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with progress.showing(display):
            yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(level)
