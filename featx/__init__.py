"""featx: frozen pretrained features for image collections, cached and ready for heads."""

__version__ = "0.1.0"
