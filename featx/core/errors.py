"""Exceptions featx raises; each message is one line that names the file and the reason."""
from __future__ import annotations

import signal


class FeatxError(Exception):
    """Base class for errors a user can act on."""


class ParameterError(FeatxError, ValueError):
    """A parameter whose value featx cannot use. The message names the parameter as the
    library spells it (``device='tpu': choose auto, cpu or cuda``); the command line
    shows it as its flag (``--device tpu: ...``)."""

    def __init__(self, name: str, value, reason: str):
        self.name, self.value, self.reason = name, value, reason
        super().__init__(f"{name}={value!r}: {reason}")

    def as_flag(self) -> str:
        """The message as the command line's option would say it."""
        return f"--{self.name.replace('_', '-')} {self.value}: {self.reason}"


class SourceError(FeatxError):
    """A data source cannot be opened or listed."""


class BackboneError(FeatxError):
    """A backbone cannot be built or its weights cannot be loaded."""


class StoreError(FeatxError):
    """An embedding store is missing, damaged or does not match the request."""


class WriteError(FeatxError):
    """A file could not be written: the disk or quota is full, the file system is
    read-only, or the folder is not writable. Whatever was written before stays valid."""


class Interrupted(KeyboardInterrupt):
    """Stopped by SIGTERM (a cluster ending or preempting the job) or SIGINT (Ctrl-C).

    A ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it and code
    that catches Ctrl-C catches it too. An extraction raises it after committing the
    batches it had embedded: ``embedded`` images and ``skipped`` unusable files of this
    run are kept in the folder ``kept_in`` and the next run resumes from them; only the
    batch in flight is lost. ``embedded`` is None where nothing had been counted yet.
    """

    def __init__(self, signum: int, embedded: int | None = None, skipped: int = 0):
        super().__init__(signum)
        self.signum, self.embedded, self.skipped = signum, embedded, skipped
        self.kept_in, self.process = None, ""

    def count(self, parts) -> Interrupted:
        """Count this run's committed parts (rows, each with its skipped files)."""
        self.embedded = sum(len(p) for p in parts)
        self.skipped = sum(len(p.skipped_keys) for p in parts)
        return self

    @property
    def kept(self) -> int:
        """Images of this run kept for the next one: embedded, or recorded as unusable."""
        return (self.embedded or 0) + self.skipped

    def __str__(self) -> str:
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        head = f"stopped by {name}{self.process}"
        if not self.kept or self.kept_in is None:
            return f"{head} before a batch was finished: no images embedded in this run are kept"
        done = (f"{self.kept:,} images embedded in this run are" if not self.skipped else
                f"{self.kept:,} images done in this run ({self.embedded:,} embedded, "
                f"{self.skipped:,} unusable) are")
        return f"{head}: {done} kept in {self.kept_in}; the next run resumes from them"
