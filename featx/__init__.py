"""featx: frozen pretrained networks over image collections, their embeddings cached,
scikit-learn heads trained on them in seconds, the networks fine-tuned for comparison,
and reports that show what transfer learning buys.

    import featx

    result = featx.extract("photos/", "efficientnet_lite0")      # photos/<class>/<image>
    X, y, keys, classes = featx.load(result.path)
    model = featx.train(result.path, "logreg", out="models/photos.joblib")
    featx.predict("models/photos.joblib", "new_photos/", out="predictions.csv")

Every name in ``__all__`` is imported on first use, so ``import featx`` is quick and
pulls in neither torch nor scikit-learn.
"""
from importlib import import_module as _import_module

from .core.version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "extract": "featx.extraction.run",
    "ImageEmbedder": "featx.extraction.embedder",
    "load": "featx.api",
    "iter_batches": "featx.api",
    "train": "featx.api",
    "predict": "featx.api",
    "finetune": "featx.api",
    "run_pipeline": "featx.api",
    "make_head": "featx.heads.catalog",
    "list_heads": "featx.heads.catalog",
    "list_backbones": "featx.backbones.registry",
}

__all__ = ["ImageEmbedder", "__version__", "extract", "finetune", "iter_batches", "list_backbones",
           "list_heads", "load", "make_head", "predict", "run_pipeline", "train"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'featx' has no attribute {name!r}")
    value = getattr(_import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted({*globals(), *_PUBLIC})
