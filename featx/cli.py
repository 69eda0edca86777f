"""The ``featx`` command line: the only module that parses arguments and prints."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

from . import __version__
from .errors import FeatxError
from .store import DEFAULT_LAYER

DEFAULT_CACHE = os.environ.get("FEATX_CACHE", "cache")
DEFAULT_DATA = os.environ.get("FEATX_DATA", "data")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError("name at least one")
    return names


def _per_class(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        split, _, n = part.partition("=")
        if split not in ("train", "val", "test") or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"expected SPLIT=N with SPLIT train, val or test, got {part!r}")
        out[split] = int(n)
    return out


def _on_error(p: argparse.ArgumentParser, default: str | None = "skip") -> None:
    p.add_argument("--on-error", choices=["skip", "fail"], default=default,
                   help="a file that cannot be used: skip records it with its reason and goes on (default"
                        + (" the pipeline's extract.on_error, else skip" if default is None else "")
                        + "); fail stops at the first, naming it")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featx", description="Frozen pretrained features for image collections.")
    p.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("extract", help="embed every image of a source into the cache; prints the store's path")
    e.add_argument("--data", required=True, metavar="SRC",
                   help="folder (root/<class>/<image>), archive.tar[:prefix], manifest.csv, or 'sample'")
    e.add_argument("--backbone", required=True, metavar="NAME",
                   help="efficientnet_lite0|1|2, timm:<model> or torchvision:<model>[:<weights enum>]")
    e.add_argument("--weights", metavar="FILE", help="local state dict for the backbone's architecture")
    e.add_argument("--layers", metavar="A,B", default="", help="also store these named stages, each pooled")
    e.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR", help=f"cache folder (default: {DEFAULT_CACHE})")
    e.add_argument("--image-size", type=_positive, metavar="N", help="input resolution (default: the weights')")
    e.add_argument("--batch-size", type=_positive, metavar="N", help="images per batch (default: 64 on the CPU, 256 on CUDA)")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="where JPEGs are decoded and resized: CPU workers, or batched on the CUDA device (nvJPEG)")
    e.add_argument("--workers", type=_non_negative, metavar="N", help="decoding processes (default: one per core, at most 8)")
    _on_error(e)

    t = sub.add_parser("train", help="fit one head (with its hyper-parameter sweep) on a store; writes a model file")
    t.add_argument("--features", required=True, metavar="STORE", help="a store's path, or its name in the cache")
    t.add_argument("--head", required=True, metavar="NAME",
                   help="logreg, knn, ... (see the README; an unknown name lists them all)")
    t.add_argument("--val", metavar="STORE", help="a store of validation images (default: a split of --features)")
    t.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F",
                   help="share of --features held out for validation when there is no --val (default 0.2)")
    t.add_argument("--layer", default=DEFAULT_LAYER, metavar="NAME", help="which stored features to use")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")
    t.add_argument("--out", required=True, metavar="FILE",
                   help="model file to write, joblib or .skops (a .json sidecar goes beside it)")
    t.add_argument("--n-jobs", type=int, metavar="N", help="run the sweep as N parallel tasks (-1: all workers)")
    t.add_argument("--sweep-backend", choices=["loky", "dask", "ray"], default="loky",
                   help="where the sweep's tasks run: local processes, a dask or a Ray cluster")
    t.add_argument("--scheduler", metavar="ADDRESS", help="the dask scheduler or Ray cluster (default: a local one)")

    pr = sub.add_parser("predict", help="label images end-to-end with a model file; writes a CSV")
    pr.add_argument("--model", required=True, metavar="FILE")
    pr.add_argument("--data", required=True, metavar="SRC")
    pr.add_argument("--out", required=True, metavar="CSV")
    pr.add_argument("--top-k", type=_positive, default=3, metavar="K", help="classes listed per image (default 3)")
    pr.add_argument("--weights", metavar="FILE", help="the backbone's weights file, if the model was trained on one")
    pr.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")
    pr.add_argument("--batch-size", type=_positive, metavar="N", help="default: 64 on the CPU, 256 on CUDA")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    pr.add_argument("--workers", type=_non_negative, metavar="N")
    _on_error(pr)

    f = sub.add_parser("finetune", help="fine-tune a backbone end-to-end (or train it from scratch); writes "
                       "DIR/model.pt and DIR/metrics.json")
    f.add_argument("--data", required=True, metavar="SRC", help="training images (labelled by folder)")
    f.add_argument("--backbone", required=True, metavar="NAME")
    f.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoints, model.pt, metrics.json")
    f.add_argument("--val", metavar="SRC", help="validation images (default: --val-fraction of --data)")
    f.add_argument("--test", metavar="SRC", help="test images, scored once with the best epoch")
    f.add_argument("--strategy", metavar="NAME",
                   help="what trains: lp_ft (default), full, last_k or head (see the README)")
    f.add_argument("--scratch", action="store_true", help="random initialisation instead of the pretrained weights")
    f.add_argument("--epochs", type=_positive, default=10, metavar="N")
    f.add_argument("--batch-size", type=_positive, default=32, metavar="N")
    f.add_argument("--accumulate", type=_positive, default=1, metavar="N", help="batches per optimizer step")
    f.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    f.add_argument("--lr", type=float, metavar="LR", help="the classifier's learning rate (default 1e-3 AdamW, 1e-2 SGD; a tenth of that for lp_ft)")
    f.add_argument("--last-k", type=_positive, default=2, metavar="K", help="stages trained by --strategy last_k")
    f.add_argument("--patience", type=_positive, default=3, metavar="N", help="epochs without improvement before stopping")
    f.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F")
    f.add_argument("--image-size", type=_positive, metavar="N")
    f.add_argument("--weights", metavar="FILE", help="local state dict for the backbone")
    f.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    f.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    f.add_argument("--workers", type=_non_negative, metavar="N")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    f.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR", help="store for lp_ft's frozen features")

    r = sub.add_parser("run", help="run a YAML pipeline; writes report.json, report.md and report.html")
    r.add_argument("pipeline", metavar="PIPELINE.yaml")
    r.add_argument("--out", metavar="DIR", help="output folder (default: reports/<pipeline name>)")
    r.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")
    _on_error(r, default=None)

    d = sub.add_parser("demo", help="the whole pipeline on a built-in generated dataset (offline), or on --data")
    d.add_argument("--out", default=os.path.join("reports", "demo"), metavar="DIR")
    d.add_argument("--data", metavar="SRC", help="your images instead (folder with train/ and test/, or any source)")
    d.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")

    b = sub.add_parser("bench", help="datasets x backbones x methods in one report, with published figures beside")
    b.add_argument("--datasets", required=True, type=_names, metavar="A,B", help="from featx datasets list")
    b.add_argument("--backbones", required=True, type=_names, metavar="X,Y")
    b.add_argument("--heads", type=_names, default=["logreg"], metavar="H,..", help="default: logreg, the linear probe")
    b.add_argument("--finetune", action="store_true", help="also fine-tune each backbone (LP-FT) on each dataset")
    b.add_argument("--epochs", type=_positive, metavar="N", help="fine-tuning epochs (default: the pipeline's)")
    b.add_argument("--per-class", type=_per_class, default={}, metavar="SPLIT=N,..",
                   help="a seeded subset, e.g. train=500,test=200 images per class")
    b.add_argument("--image-size", type=_positive, metavar="N")
    b.add_argument("--batch-size", type=_positive, metavar="N")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--root", default=DEFAULT_DATA, metavar="DIR", help=f"datasets folder (default: {DEFAULT_DATA})")
    b.add_argument("--out", default=os.path.join("reports", "bench"), metavar="DIR")
    b.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")

    ds = sub.add_parser("datasets", help="the standard transfer datasets: list them, or fetch one in featx's layout")
    dsub = ds.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="the datasets featx can fetch, and which are under --root")
    dl.add_argument("--root", default=DEFAULT_DATA, metavar="DIR")
    dg = dsub.add_parser("get", help="download (or take --archive), verify and convert; prints the folder")
    dg.add_argument("name", metavar="NAME")
    dg.add_argument("--root", default=DEFAULT_DATA, metavar="DIR", help=f"where datasets go (default: {DEFAULT_DATA})")
    dg.add_argument("--archive", action="append", default=[], metavar="FILE",
                    help="a copy of the dataset's archive fetched by hand (repeat for datasets of several files)")

    c = sub.add_parser("cache", help="inspect and manage the embedding stores")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext, nargs in (
        ("ls", "list the stores", None),
        ("info", "provenance, sizes and skipped files of a store", 1),
        ("verify", "check stores against their checksums (all when none is named)", "*"),
        ("rm", "delete stores", "*"),
    ):
        a = csub.add_parser(name, help=helptext)
        a.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR")
        if nargs is not None:
            a.add_argument("stores", nargs=nargs, metavar="STORE", help="a path, or a store's name in the cache")
        if name == "rm":
            a.add_argument("--all", action="store_true", help="delete every store in the cache")
    return p


def _extract(args) -> int:
    from .extract import extract

    layers = tuple(s for s in (x.strip() for x in args.layers.split(",")) if s)
    result = extract(
        args.data, args.backbone, args.cache, weights=args.weights, layers=layers,
        image_size=args.image_size, batch_size=args.batch_size, precision=args.precision,
        device=args.device, decode=args.decode, workers=args.workers, on_error=args.on_error, progress=True,
    )
    speed = f" at {result.images_per_second:.1f} images/s" if result.embedded else ""
    print(
        f"{result.rows} images in the store: {result.embedded} embedded{speed}, {result.reused} reused, "
        f"{result.skipped} skipped ({result.precision} on {result.device})",
        file=sys.stderr,
    )
    print(result.path)
    return 0


def _train(args) -> int:
    from . import models, store

    features = store.resolve(args.cache, args.features)
    val = store.resolve(args.cache, args.val) if args.val else None
    from .sweeps import sweep_backend

    with sweep_backend(args.sweep_backend, args.scheduler):
        b = models.train(features, args.head, val=val, layer=args.layer, val_fraction=args.val_fraction,
                         seed=args.seed, n_jobs=args.n_jobs)
    path = models.save(b, args.out)
    m = b["metrics"]
    chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m["best_params"].items())
    val_text = "no validation split (too few images)" if m["val_accuracy"] is None else \
        f"validation accuracy {100 * m['val_accuracy']:.1f} %"
    print(f"{args.head} on {m['n_train']} images in {m['fit_seconds']:.1f} s: {val_text}"
          + (f", chose {chosen}" if chosen else ""), file=sys.stderr)
    print(path)
    return 0


def _predict(args) -> int:
    from . import models

    b = models.load(args.model)
    result = models.predict(b, args.data, args.cache, weights=args.weights, batch_size=args.batch_size,
                            device=args.device, workers=args.workers, on_error=args.on_error, progress=True)
    path = result.write_csv(args.out, top_k=args.top_k)
    acc = result.accuracy
    print(f"{len(result.keys)} images labelled, {len(result.skipped)} skipped"
          + ("" if acc is None else f"; accuracy against their folder labels {100 * acc:.2f} %"), file=sys.stderr)
    print(path)
    return 0


def _finetune(args) -> int:
    from .finetune import Settings, finetune

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
                 resume=args.resume, progress=True, log=_log)
    test = "" if r.test is None else f", test accuracy {100 * r.test['test_accuracy']:.2f} %"
    print(f"{r.method}: best epoch {r.best_epoch} of {r.epochs_run}, validation accuracy {100 * r.val_accuracy:.1f} %"
          f"{test}; {r.seconds:.0f} s, training at {r.train_images_per_second:.1f} images/s", file=sys.stderr)
    print(r.model)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _show(report: dict, out) -> int:
    from .report import summary

    for line in summary(report):
        print(line, file=sys.stderr)
    print(f"report: {os.path.join(out, 'report.html')}")
    return 0


def _run(args) -> int:
    from . import pipeline

    p = pipeline.load(args.pipeline)
    if args.on_error:
        p.extract["on_error"] = args.on_error
    out = args.out or os.path.join("reports", p.name)
    return _show(pipeline.run(p, out, args.cache, progress=True, log=_log), out)


def _demo(args) -> int:
    from . import pipeline
    from .demo import demo_pipeline

    if args.data is None:
        _log("demo: generated texture dataset (10 classes), efficientnet_lite0 against raw pixels")
    p = demo_pipeline(args.cache, args.data)
    return _show(pipeline.run(p, args.out, args.cache, progress=True, log=_log), args.out)


def _bench(args) -> int:
    from .bench import run_bench, summary

    extract = {k: v for k, v in (("image_size", args.image_size), ("batch_size", args.batch_size),
                                 ("device", args.device)) if v is not None}
    finetune = None
    if args.finetune:
        finetune = {"strategies": ["lp_ft"], **({"epochs": args.epochs} if args.epochs else {})}
    elif args.epochs:
        raise FeatxError("--epochs sets the fine-tuning's epochs; add --finetune")
    suite = run_bench(args.datasets, args.backbones, args.heads, args.out, root=args.root, cache_dir=args.cache,
                      finetune=finetune, extract=extract, per_class=args.per_class, seed=args.seed, progress=True,
                      log=_log)
    for line in summary(suite):
        print(line, file=sys.stderr)
    print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def _datasets(args) -> int:
    from . import datasets

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
    print(datasets.get(args.name, args.root, archives=args.archive, progress=True, log=_log))
    return 0


def _cache(args) -> int:
    from . import store

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


def main(argv: list[str] | None = None) -> int:
    from . import distributed

    args = _parser().parse_args(argv)
    try:
        commands = {"extract": _extract, "train": _train, "predict": _predict, "finetune": _finetune, "run": _run, "demo": _demo, "cache": _cache,
                    "bench": _bench, "datasets": _datasets}
        if not distributed.launched():
            return commands[args.command](args)
        if args.command not in ("extract", "run", "finetune"):
            raise FeatxError(f"{args.command}: not a command that runs under torchrun (extract, run and finetune do)")
        # under torchrun: every process runs the command, the first one speaks for all
        try:
            w = distributed.init_from_env(getattr(args, "device", "auto"))
            with contextlib.ExitStack() as quiet:
                if not w.is_main:
                    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
                return commands[args.command](args)
        finally:
            distributed.shutdown()
    except FeatxError as exc:
        print(f"featx: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("featx: interrupted; committed batches are kept and the next run resumes from them", file=sys.stderr)
        return 130
