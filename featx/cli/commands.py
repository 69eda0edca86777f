"""What each command does: calls into the library, prints its result."""
from __future__ import annotations

import json
import logging
import os
import sys

from ..core.errors import FeatxError

log = logging.getLogger("featx")

def cmd_extract(args) -> int:
    from ..extraction import extract

    layers = tuple(s for s in (x.strip() for x in args.layers.split(",")) if s)
    result = extract(
        args.data, args.backbone, args.cache, weights=args.weights, layers=layers,
        image_size=args.image_size, batch_size=args.batch_size, precision=args.precision,
        device=args.device, decode=args.decode, workers=args.workers, on_error=args.on_error,
        commit_rows=args.commit_rows,
    )
    speed = f" at {result.images_per_second:.1f} images/s" if result.embedded else ""
    print(
        f"{result.rows} images in the store: {result.embedded} embedded{speed}, {result.reused} reused, "
        f"{result.skipped} skipped ({result.precision} on {result.device})",
        file=sys.stderr,
    )
    print(result.path)
    return 0


def cmd_train(args) -> int:
    from .. import store
    from ..heads.bundle import save
    from ..heads.fitting import train
    from ..heads.sweeps import sweep_backend

    features = store.resolve(args.cache, args.features)
    val = store.resolve(args.cache, args.val) if args.val else None

    with sweep_backend(args.sweep_backend, args.scheduler):
        b = train(features, args.head, val=val, layer=args.layer, val_fraction=args.val_fraction,
                         seed=args.seed, n_jobs=args.n_jobs)
    path = save(b, args.out)
    m = b.metrics
    chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m["best_params"].items())
    val_text = "no validation split (too few images)" if m["val_accuracy"] is None else \
        f"validation accuracy {100 * m['val_accuracy']:.1f} %"
    print(f"{args.head} on {m['n_train']} images in {m['fit_seconds']:.1f} s: {val_text}"
          + (f", chose {chosen}" if chosen else ""), file=sys.stderr)
    print(path)
    return 0


def cmd_predict(args) -> int:
    from ..heads.bundle import load
    from ..heads.predict import predict

    b = load(args.model)
    result = predict(b, args.data, args.cache, weights=args.weights, batch_size=args.batch_size,
                     device=args.device, workers=args.workers, on_error=args.on_error)
    path = result.write_csv(args.out, top_k=args.top_k)
    acc = result.accuracy
    print(f"{len(result.keys)} images labelled, {len(result.skipped)} skipped"
          + ("" if acc is None else f"; accuracy against their folder labels {100 * acc:.2f} %"), file=sys.stderr)
    print(path)
    return 0


def cmd_finetune(args) -> int:
    from ..training import Settings, finetune

    if args.scratch and args.strategy:
        raise FeatxError(f"--scratch trains the whole network from random weights; it takes no --strategy "
                         f"({args.strategy})")
    settings = Settings(strategy="full" if args.scratch else args.strategy or "lp_ft", pretrained=not args.scratch,
                        epochs=args.epochs, batch_size=args.batch_size, accumulate=args.accumulate,
                        optimizer=args.optimizer, lr=args.lr, last_k=args.last_k, patience=args.patience,
                        image_size=args.image_size, precision=args.precision, val_fraction=args.val_fraction,
                        seed=args.seed)
    r = finetune(args.data, args.backbone, args.out, val=args.val, test=args.test, settings=settings,
                 weights=args.weights, cache_dir=args.cache, device=args.device, workers=args.workers,
                 resume=args.resume)
    test = "" if r.test is None else f", test accuracy {100 * r.test['test_accuracy']:.2f} %"
    print(f"{r.method}: best epoch {r.best_epoch} of {r.epochs_run}, validation accuracy {100 * r.val_accuracy:.1f} %"
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
    from ..bench.run import run

    p = load(args.pipeline)
    if args.on_error:
        p.extract["on_error"] = args.on_error
    out = args.out or os.path.join("reports", p.name)
    return _show(run(p, out, args.cache), out)


def cmd_demo(args) -> int:
    from ..bench.demo import demo_pipeline
    from ..bench.run import run

    if args.data is None:
        log.info("demo: generated texture dataset (10 classes), efficientnet_lite0 against raw pixels")
    p = demo_pipeline(args.cache, args.data)
    return _show(run(p, args.out, args.cache), args.out)


def cmd_bench(args) -> int:
    from ..bench.suite import run_bench, summary

    extract = {k: v for k, v in (("image_size", args.image_size), ("batch_size", args.batch_size),
                                 ("device", args.device)) if v is not None}
    finetune = None
    if args.finetune:
        finetune = {"strategies": ["lp_ft"], **({"epochs": args.epochs} if args.epochs else {})}
    elif args.epochs:
        raise FeatxError("--epochs sets the fine-tuning's epochs; add --finetune")
    suite = run_bench(args.datasets, args.backbones, args.heads, args.out, root=args.root, cache_dir=args.cache,
                      finetune=finetune, extract=extract, per_class=args.per_class, seed=args.seed)
    for line in summary(suite):
        print(line, file=sys.stderr)
    print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def cmd_datasets(args) -> int:
    from ..data import datasets

    if args.action == "list":
        rows = [("name", "download", "prepared", "splits")]
        for d in datasets.CATALOG.values():
            done = datasets.prepared(args.root, d.name)
            size = f"{d.download_bytes / 1e6:,.0f} MB" if d.packagings[0].downloadable else "-"
            rows.append((d.name, size, f"{done['images']:,} images" if done else "-", d.splits))
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[3])
        return 0
    print(datasets.get(args.name, args.root, archives=args.archive))
    return 0


def cmd_cache(args) -> int:
    from .. import store

    if args.action == "ls":
        rows = []
        for path in store.list_stores(args.cache):
            try:
                i = store.info(path)
            except FeatxError as exc:
                rows.append((path.name, "-", "-", "-", f"unreadable: {exc}"))
                continue
            prov = i["provenance"]
            dims = ",".join(str(s[1]) for s in i["features"].values())
            rows.append((path.name, str(i["rows"]), dims, prov["precision"], f"{i['bytes'] / 1e6:.1f} MB  {prov['created']}"))
        if not rows:
            print(f"no stores in {args.cache}")
            return 0
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
        return 0
    if args.action == "info":
        print(json.dumps(store.info(store.resolve(args.cache, args.stores[0])), indent=2))
        return 0
    if args.action == "verify":
        paths = [store.resolve(args.cache, s) for s in args.stores] or store.list_stores(args.cache)
        bad = 0
        for path in paths:
            problems = store.verify(path)
            bad += bool(problems)
            print(f"{'ok' if not problems else 'DAMAGED'}  {path}" + "".join(f"\n    {p}" for p in problems))
        return 1 if bad else 0
    if args.action == "rm":
        if not args.stores and not args.all:
            raise FeatxError("cache rm: name the stores to delete, or pass --all")
        paths = store.list_stores(args.cache) if args.all else [store.resolve(args.cache, s) for s in args.stores]
        for path in paths:
            store.remove(path)
            print(f"removed {path}")
        return 0
    raise AssertionError(args.action)
