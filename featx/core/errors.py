"""Exceptions featx raises; each message is one line that names the file and the reason."""


class FeatxError(Exception):
    """Base class for errors a user can act on."""


class SourceError(FeatxError):
    """A data source cannot be opened or listed."""


class BackboneError(FeatxError):
    """A backbone cannot be built or its weights cannot be loaded."""


class StoreError(FeatxError):
    """An embedding store is missing, damaged or does not match the request."""


class WriteError(FeatxError):
    """A file could not be written: the disk or quota is full, the file system is
    read-only, or the folder is not writable. Whatever was written before stays valid."""
