"""The ``featx`` command line: the only module that parses arguments and prints."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import FeatxError

DEFAULT_CACHE = os.environ.get("FEATX_CACHE", "cache")


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
    e.add_argument("--batch-size", type=_positive, default=64, metavar="N")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    e.add_argument("--workers", type=_non_negative, metavar="N", help="decoding processes (default: one per core, at most 8)")

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
        device=args.device, workers=args.workers, progress=True,
    )
    speed = f" at {result.images_per_second:.1f} images/s" if result.embedded else ""
    print(
        f"{result.rows} images in the store: {result.embedded} embedded{speed}, {result.reused} reused, "
        f"{result.skipped} skipped ({result.precision} on {result.device})",
        file=sys.stderr,
    )
    print(result.path)
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
    args = _parser().parse_args(argv)
    try:
        return {"extract": _extract, "cache": _cache}[args.command](args)
    except FeatxError as exc:
        print(f"featx: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("featx: interrupted; committed batches are kept and the next run resumes from them", file=sys.stderr)
        return 130
