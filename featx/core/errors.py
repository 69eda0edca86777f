"""Exceptions featx raises; each message is one line that names the file and the reason."""


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
