"""featx: frozen pretrained features for image collections, cached and ready for heads."""

from .core.version import __version__

__all__ = ["__version__"]
