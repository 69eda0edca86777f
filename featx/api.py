"""featx's public functions, as ``import featx`` exposes them (``featx/__init__.py``
imports this module on first use). Each takes what the command of the same name takes,
with the same defaults; the command line only parses arguments, calls one of these and
prints the result."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .core.errors import ParameterError
from .core.names import DEFAULT_LAYER


def load(store: str | os.PathLike, layer: str = DEFAULT_LAYER, *, rows=None, lazy: bool = False,
         cache_dir: str | os.PathLike = "cache"):
    """The features a store holds for one layer, with what they describe.

    Parameters
    ----------
    store : path or str
        The store's path, or its file name (or a unique start of it) in ``cache_dir``, as
        :func:`extract` returned it and ``featx cache ls`` lists it.
    layer : str
        Which features: ``"embedding"`` (the pooled penultimate layer, the default) or a
        layer named with ``layers=`` when the store was extracted.
    rows : slice or array, optional
        Only these rows (in key order, as the store lists them): a slice, row indices or
        a boolean mask.
    lazy : bool
        Leave ``X`` on disk: an array-like whose slices ``X[a:b]`` read only those rows
        (what the out-of-core heads stream from).
    cache_dir : path
        The cache folder in which a store given by name is looked for.

    Returns
    -------
    featx.store.Features
        ``X`` (float32, one row per image), ``y`` (int64 labels into ``classes``, -1 for an
        unlabelled image), ``keys`` (each row's image), ``classes`` and ``provenance``;
        it unpacks as ``X, y, keys, classes``.
    """
    from .store import load as load_store
    from .store import resolve

    return load_store(resolve(cache_dir, os.fspath(store)), layer, rows=rows, lazy=lazy)


def iter_batches(store: str | os.PathLike, rows_per_batch: int, layer: str = DEFAULT_LAYER, *,
                 cache_dir: str | os.PathLike = "cache"):
    """A store's rows in order, a batch at a time: a store larger than memory, read in
    bounded memory.

    Parameters
    ----------
    store : path or str
        The store's path, or its name (or a unique start of it) in ``cache_dir``.
    rows_per_batch : int
        Rows in each batch (the last may hold fewer).
    layer : str
        Which features (default ``"embedding"``).
    cache_dir : path
        The cache folder in which a store given by name is looked for.

    Returns
    -------
    iterator of featx.store.Features
        Each with ``X``, ``y`` and ``keys`` of its rows, and the store's ``classes``.
    """
    from .store import iter_batches as batches
    from .store import resolve

    if rows_per_batch < 1:
        raise ParameterError("rows_per_batch", rows_per_batch, "must be at least 1")
    return batches(resolve(cache_dir, os.fspath(store)), rows_per_batch, layer)


def train(features: str | os.PathLike, head: str, *, out: str | os.PathLike | None = None,
          val: str | os.PathLike | None = None, layer: str = DEFAULT_LAYER, val_fraction: float = 0.2,
          seed: int = 0, n_jobs: int | None = None, sweep_backend: str = "loky", scheduler: str | None = None,
          max_memory: int | None = None, cache_dir: str | os.PathLike = "cache"):
    """Fit a head on a store's features, its hyper-parameter chosen on a validation split.

    Parameters
    ----------
    features : path or str
        The training store: its path, or its name in ``cache_dir``.
    head : str
        The head's name (:func:`list_heads`): ``logreg``, ``linear_svm``, ``ridge``,
        ``knn``, ``nearest_centroid``, ``mlp`` or ``hgb``.
    out : path, optional
        Where to save the fitted model: a ``.skops`` file, else joblib, with a ``.json``
        sidecar beside it. Nothing is written when it is None.
    val : path or str, optional
        A store of validation images (same backbone and precision); without it a
        stratified ``val_fraction`` of ``features`` is held out.
    layer : str
        Which stored features to fit on (default ``"embedding"``).
    val_fraction : float
        Share of ``features`` held out for validation when there is no ``val``.
    seed : int
        Seed of the validation split.
    n_jobs : int, optional
        Run the hyper-parameter sweep as this many parallel tasks (-1: all workers).
    sweep_backend : str
        Where those tasks run: ``loky`` (local processes), ``dask`` or ``ray``.
    scheduler : str, optional
        The dask scheduler or Ray cluster's address (default: a local one).
    max_memory : int, optional
        Bytes the features may take while ``logreg``, ``ridge`` or ``knn`` is fitted: the
        store is read by blocks (out of core), with the same result as in memory. Without
        it, those heads stream a store larger than a quarter of the available memory.
    cache_dir : path
        The cache folder in which stores given by name are looked for.

    Returns
    -------
    featx.heads.bundle.Bundle
        The fitted head with the backbone identity, classes and validation metrics;
        ``bundle.model`` is a scikit-learn estimator.
    """
    from . import store
    from .heads.bundle import save
    from .heads.fitting import train as fit_store
    from .heads.sweeps import sweep_backend as backend

    path = store.resolve(cache_dir, os.fspath(features))
    val_path = store.resolve(cache_dir, os.fspath(val)) if val is not None else None
    with backend(sweep_backend, scheduler):
        bundle = fit_store(path, head, val=val_path, layer=layer, val_fraction=val_fraction, seed=seed,
                           n_jobs=n_jobs, max_memory=max_memory)
    if out is not None:
        save(bundle, out)
    return bundle


def predict(model, data, *, out: str | os.PathLike | None = None, top_k: int = 3, weights: str | None = None,
            cache_dir: str | os.PathLike = "cache", batch_size: int | None = None, device: str = "auto",
            workers: int | None = None, on_error: str = "skip"):
    """Label images end-to-end: the model's backbone embeds them (through the cache,
    so known images are not embedded again), then its head classifies them.

    Parameters
    ----------
    model : path or Bundle
        A model file written by :func:`train` or a pipeline, a fine-tune's ``model.pt``,
        or a bundle :func:`train` returned.
    data : path or str
        The images: any source :func:`extract` takes.
    out : path, optional
        A CSV to write, one row per image: path, label, probability, the ``top_k``
        classes, the true label from its folder, and the error of a skipped file.
    top_k : int
        Classes listed per image in the CSV.
    weights : path, optional
        The backbone's weights file, when the model was trained on features of one.
    cache_dir : path
        The cache folder.
    batch_size : int, optional
        Images per batch (default: 64 on the CPU; on CUDA what fits the GPU, 64 to 1024).
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    workers : int, optional
        Decoding processes (default: one per core, at most 8).
    on_error : str
        ``skip`` records a file that cannot be used and goes on; ``fail`` stops at it.

    Returns
    -------
    featx.heads.predict.Predictions
        Keys, predicted labels, probabilities, the true labels where known, skipped files.
    """
    from .heads.bundle import Bundle
    from .heads.bundle import load as load_model
    from .heads.predict import predict as run

    bundle = model if isinstance(model, Bundle) else load_model(model)
    result = run(bundle, data, cache_dir, weights=weights, batch_size=batch_size, device=device,
                 workers=workers, on_error=on_error)
    if out is not None:
        result.write_csv(out, top_k=top_k)
    return result


def finetune(data, backbone: str, out: str | os.PathLike, *, val=None, test=None, strategy: str | None = None,
             scratch: bool = False, epochs: int = 10, batch_size: int = 32, accumulate: int = 1,
             optimizer: str = "adamw", lr: float | None = None, last_k: int = 2, patience: int = 3,
             val_fraction: float = 0.2, image_size: int | None = None, weights: str | None = None,
             precision: str = "auto", device: str = "auto", workers: int | None = None, seed: int = 0,
             resume: bool = False, cache_dir: str | os.PathLike = "cache"):
    """Train the network itself on labelled images: fine-tune it, or (``scratch``) train
    the same architecture from random weights; the best epoch is chosen on a validation
    split and the test split is scored once.

    Parameters
    ----------
    data : path or str
        Training images, labelled by their folder (any source :func:`extract` takes).
    backbone : str
        The network (any name :func:`extract` takes but ``pixels``).
    out : path
        The run folder: ``model.pt`` (the best epoch's weights), its sidecar,
        ``metrics.json``, and a checkpoint after every epoch.
    val : path or str, optional
        Validation images; without them a stratified ``val_fraction`` of ``data``.
    test : path or str, optional
        Test images, scored once with the best epoch.
    strategy : str, optional
        What trains: ``lp_ft`` (default: everything, the classifier starting from the
        logistic regression on frozen features), ``full``, ``last_k`` or ``head``.
    scratch : bool
        Random initialisation instead of the pretrained weights (takes no ``strategy``).
    epochs : int
        At most this many epochs.
    batch_size : int
        Images per batch.
    accumulate : int
        Batches per optimizer step.
    optimizer : str
        ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
    lr : float, optional
        The classifier's learning rate (default 1e-3 with AdamW, 1e-2 with SGD; a tenth of
        that for ``lp_ft``).
    last_k : int
        Stages trained by the ``last_k`` strategy.
    patience : int
        Stop after this many epochs without a better validation accuracy.
    val_fraction : float
        Share of ``data`` held out for validation when there is no ``val``.
    image_size : int, optional
        Training resolution (default: the weights').
    weights : path, optional
        A local state dict for the backbone.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    workers : int, optional
        Decoding processes.
    seed : int
        Seed of the split, the initial classifier, crops, flips and shuffles.
    resume : bool
        Continue the interrupted run in ``out``.
    cache_dir : path
        The cache folder (``lp_ft`` embeds the images with the frozen network first).

    Returns
    -------
    featx.training.FinetuneResult
        Paths, the best epoch, validation and test metrics, times.
    """
    from .core.errors import ParameterError
    from .training import Settings
    from .training import finetune as train_network

    if scratch and strategy:
        raise ParameterError("strategy", strategy, "scratch trains the whole network from random weights, "
                             "so it takes no strategy")
    settings = Settings(strategy="full" if scratch else strategy or "lp_ft", pretrained=not scratch,
                        epochs=epochs, batch_size=batch_size, accumulate=accumulate, optimizer=optimizer,
                        lr=lr, last_k=last_k, patience=patience, image_size=image_size, precision=precision,
                        val_fraction=val_fraction, seed=seed)
    return train_network(data, backbone, out, val=val, test=test, settings=settings, weights=weights,
                         cache_dir=cache_dir, device=device, workers=workers, resume=resume)


def run_pipeline(pipeline, *, out: str | os.PathLike | None = None, cache_dir: str | os.PathLike = "cache",
                 on_error: str | None = None) -> dict:
    """Run a pipeline: its backbones embed its data, its heads (and optionally the
    networks themselves) are trained and scored, and a report is written.

    Parameters
    ----------
    pipeline : path, dict or Pipeline
        A YAML pipeline file (see ``pipelines/``), the same as a dict, or a
        :class:`featx.bench.pipeline.Pipeline`.
    out : path, optional
        Output folder for ``report.json``, ``report.md``, ``report.html`` and the models
        (default: ``reports/<pipeline name>``).
    cache_dir : path
        The cache folder.
    on_error : str, optional
        ``skip`` or ``fail`` for files that cannot be used (default: the pipeline's
        ``extract.on_error``, else ``skip``).

    Returns
    -------
    dict
        The report, as ``report.json`` holds it.
    """
    from .bench.pipeline import Pipeline, from_dict
    from .bench.pipeline import load as load_pipeline
    from .bench.run import run

    if isinstance(pipeline, dict):
        pipeline = from_dict(pipeline)
    elif not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline)
    if on_error is not None:
        pipeline = replace(pipeline, extract={**pipeline.extract, "on_error": on_error})
    return run(pipeline, Path("reports") / pipeline.name if out is None else out, cache_dir)
