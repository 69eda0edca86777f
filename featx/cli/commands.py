"""What each command does: calls the library function of the same name (featx.api),
prints its result. Progress and the library's messages reach stderr through the
featx logger (see :mod:`.display`); the last line on stdout is what a script wants
(a path, a report)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .. import api
from ..core import signals
from ..core.errors import FeatxError

log = logging.getLogger("featx")


@signals.stopping()  # from the start: a signal while torch loads (seconds) is answered too
def cmd_extract(args) -> int:
    from ..extraction import extract

    layers = tuple(s for s in (x.strip() for x in args.layers.split(",")) if s)
    result = extract(args.data, args.backbone, args.cache, weights=args.weights, layers=layers,
                     image_size=args.image_size, batch_size=args.batch_size, precision=args.precision,
                     device=args.device, decode=args.decode, workers=args.workers, on_error=args.on_error,
                     commit_rows=args.commit_rows)
    print(result.path)
    return 0


def cmd_train(args) -> int:
    b = api.train(args.features, args.head, out=args.out, val=args.val, layer=args.layer,
                  val_fraction=args.val_fraction, seed=args.seed, n_jobs=args.n_jobs,
                  sweep_backend=args.sweep_backend, scheduler=args.scheduler, max_memory=args.max_memory,
                  cache_dir=args.cache)
    m = b.metrics
    chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in m["best_params"].items())
    val_text = "no validation split (too few images)" if m["val_accuracy"] is None else \
        f"validation accuracy {100 * m['val_accuracy']:.1f} %"
    print(f"{args.head} on {m['n_train']} images in {m['fit_seconds']:.1f} s: {val_text}"
          + (f", chose {chosen}" if chosen else ""), file=sys.stderr)
    print(Path(args.out))
    return 0


def cmd_predict(args) -> int:
    result = api.predict(args.model, args.data, out=args.out, top_k=args.top_k, weights=args.weights,
                         cache_dir=args.cache, batch_size=args.batch_size, device=args.device,
                         workers=args.workers, on_error=args.on_error)
    acc = result.accuracy
    print(f"{len(result.keys)} images labelled, {len(result.skipped)} skipped"
          + ("" if acc is None else f"; accuracy against their folder labels {100 * acc:.2f} %"),
          file=sys.stderr)
    print(Path(args.out))
    return 0


def cmd_finetune(args) -> int:
    r = api.finetune(args.data, args.backbone, args.out, val=args.val, test=args.test, strategy=args.strategy,
                     scratch=args.scratch, epochs=args.epochs, batch_size=args.batch_size,
                     accumulate=args.accumulate, optimizer=args.optimizer, lr=args.lr, last_k=args.last_k,
                     patience=args.patience,
                     val_fraction=args.val_fraction, image_size=args.image_size, weights=args.weights,
                     precision=args.precision, device=args.device, workers=args.workers, seed=args.seed,
                     resume=args.resume, cache_dir=args.cache)
    test = "" if r.test is None else f", test accuracy {100 * r.test['test_accuracy']:.2f} %"
    print(f"{r.method}: best epoch {r.best_epoch} of {r.epochs_run}, validation accuracy "
          f"{100 * r.val_accuracy:.1f} %"
          f"{test}; {r.seconds:.0f} s, training at {r.train_images_per_second:.1f} images/s", file=sys.stderr)
    print(r.model)
    return 0


def _show(report: dict, out) -> int:
    from ..bench.report import summary

    for line in summary(report):
        print(line, file=sys.stderr)
    print(f"report: {os.path.join(out, 'report.html')}")
    return 0


def cmd_run(args) -> int:
    from ..bench.pipeline import load

    p = load(args.pipeline)
    out = args.out or os.path.join("reports", p.name)
    return _show(api.run_pipeline(p, out=out, cache_dir=args.cache, on_error=args.on_error), out)


def cmd_demo(args) -> int:
    from ..bench.demo import demo_pipeline

    if args.data is None:
        log.info("demo: generated texture dataset (10 classes), efficientnet_lite0 against raw pixels")
    p = demo_pipeline(args.cache, args.data)
    return _show(api.run_pipeline(p, out=args.out, cache_dir=args.cache), args.out)


def cmd_bench(args) -> int:
    from ..bench.suite import run_bench, summary

    extract = {k: v for k, v in (("image_size", args.image_size), ("batch_size", args.batch_size),
                                 ("device", args.device)) if v is not None}
    finetune = None
    if args.finetune:
        finetune = {"strategies": ["lp_ft"], **({"epochs": args.epochs} if args.epochs else {})}
    elif args.epochs:
        raise FeatxError("--epochs sets the fine-tuning's epochs; add --finetune")
    suite = run_bench(args.datasets, args.backbones, args.heads, args.out, root=args.root,
                      cache_dir=args.cache, finetune=finetune, extract=extract, per_class=args.per_class,
                      seed=args.seed, search="auto" if args.search else None)
    for line in summary(suite):
        print(line, file=sys.stderr)
    print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def cmd_datasets(args) -> int:
    from ..data import datasets
    from .stores import table

    if args.action == "list":
        rows = [("name", "download", "prepared", "splits")]
        for d in datasets.CATALOG.values():
            done = datasets.prepared(args.root, d.name)
            size = f"{d.download_bytes / 1e6:,.0f} MB" if d.packagings[0].downloadable else "-"
            rows.append((d.name, size, f"{done['images']:,} images" if done else "-", d.splits))
        print(table(rows))
        return 0
    print(datasets.get(args.name, args.root, archives=args.archive))
    return 0
