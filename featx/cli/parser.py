"""The command line's arguments: what each command takes, with its help text. Imports
nothing heavy, so ``featx --help``, ``--version`` and argument errors answer at once."""
from __future__ import annotations

import argparse
import os

from ..core.names import DEFAULT_LAYER
from ..core.version import __version__

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


def _bytes(text: str) -> int:
    """A size: bytes, or with a K, M or G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or with K, M or G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


def _cache(p: argparse.ArgumentParser, what: str = "embedding stores") -> None:
    p.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR",
                   help=f"folder of the {what} (default: {DEFAULT_CACHE}, or $FEATX_CACHE)")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the network runs (default auto: CUDA when present)")


def _precision(p: argparse.ArgumentParser, auto: str) -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help=f"numeric precision of the network (default auto: {auto})")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_non_negative, metavar="N",
                   help="decoding processes (default: one per core, at most 8; beside a GPU all cores but "
                        "two)")


def _image_size(p: argparse.ArgumentParser, what: str = "input resolution") -> None:
    p.add_argument("--image-size", type=_positive, metavar="N", help=f"{what} (default: the weights')")


def _batch_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="images per batch (default: 64 on the CPU; on CUDA what fits the GPU)")


def _seed(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seed", type=int, default=0, metavar="N", help=f"seed of {what} (default 0)")


def _extract(sub) -> None:
    e = sub.add_parser("extract",
                       help="embed every image of a source into the cache; prints the store's path")
    e.add_argument("--data", required=True, metavar="SRC",
                   help="folder (root/<class>/<image>), archive.tar[:prefix], WebDataset shards "
                        "('shards/train-{000000..000099}.tar', 'shards/*.tar'), manifest.csv or .parquet, "
                        "or 'sample'")
    e.add_argument("--backbone", required=True, metavar="NAME",
                   help="efficientnet_lite0|1|2, pixels, timm:<model> or torchvision:<model>[:<weights>]")
    e.add_argument("--weights", metavar="FILE", help="local state dict for the backbone's architecture")
    e.add_argument("--layers", metavar="A,B", default="", help="also store these named stages, each pooled")
    _cache(e)
    _image_size(e)
    _batch_size(e)
    _precision(e, "bfloat16 where the hardware runs it natively, else fp16 on CUDA, fp32 on the CPU")
    _device(e)
    e.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where JPEGs are decoded and resized: CPU workers, or batched on the CUDA device "
                        "(nvJPEG); auto: the GPU when the network runs on one (default)")
    _workers(e)
    e.add_argument("--commit-rows", type=_positive, default=2048, metavar="N",
                   help="images per journal commit: a killed run loses at most this many (default 2048)")
    _on_error(e)


def _train(sub) -> None:
    t = sub.add_parser("train",
                       help="fit one head (with its hyper-parameter sweep) on a store; writes a model file")
    t.add_argument("--features", required=True, metavar="STORE",
                   help="a store's path, or its name in the cache")
    t.add_argument("--head", required=True, metavar="NAME",
                   help="logreg, linear_svm, ridge, knn, nearest_centroid, mlp or hgb")
    t.add_argument("--out", required=True, metavar="FILE",
                   help="model file to write, joblib or .skops (a .json sidecar goes beside it)")
    t.add_argument("--val", metavar="STORE",
                   help="a store of validation images (default: a split of --features)")
    t.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F",
                   help="share of --features held out for validation when there is no --val (default 0.2)")
    t.add_argument("--layer", default=DEFAULT_LAYER, metavar="NAME",
                   help=f"which stored features to use (default {DEFAULT_LAYER})")
    _seed(t, "the validation split")
    _cache(t)
    t.add_argument("--n-jobs", type=int, metavar="N",
                   help="run the sweep as N parallel tasks (-1: all workers)")
    t.add_argument("--sweep-backend", choices=["loky", "dask", "ray"], default="loky",
                   help="where the sweep's tasks run: local processes, a dask or a Ray cluster")
    t.add_argument("--scheduler", metavar="ADDRESS",
                   help="the dask scheduler or Ray cluster (default: a local one)")
    t.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                   help="fit logreg, ridge or knn reading the store by blocks within SIZE (e.g. 2G, 512M); "
                        "by default a store larger than a quarter of the free memory is")


def _predict(sub) -> None:
    pr = sub.add_parser("predict", help="label images end-to-end with a model file; writes a CSV")
    pr.add_argument("--model", required=True, metavar="FILE",
                    help="a model file from train or run, or a fine-tune's model.pt")
    pr.add_argument("--data", required=True, metavar="SRC",
                    help="the images to label, any source extract takes")
    pr.add_argument("--out", required=True, metavar="CSV", help="the CSV to write: one row per image")
    pr.add_argument("--top-k", type=_positive, default=3, metavar="K",
                    help="classes listed per image (default 3)")
    pr.add_argument("--weights", metavar="FILE",
                    help="the backbone's weights file, if the model was trained on one")
    _cache(pr)
    _batch_size(pr)
    _device(pr)
    _workers(pr)
    _on_error(pr)


def _finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a backbone end-to-end (or train it from scratch); writes "
                       "DIR/model.pt and DIR/metrics.json")
    f.add_argument("--data", required=True, metavar="SRC", help="training images (labelled by folder)")
    f.add_argument("--backbone", required=True, metavar="NAME", help="a backbone extract takes (not pixels)")
    f.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: checkpoints, model.pt, metrics.json")
    f.add_argument("--val", metavar="SRC", help="validation images (default: --val-fraction of --data)")
    f.add_argument("--test", metavar="SRC", help="test images, scored once with the best epoch")
    f.add_argument("--strategy", metavar="NAME", help="what trains: lp_ft (default), full, last_k or head")
    f.add_argument("--scratch", action="store_true",
                   help="random initialisation instead of the pretrained weights")
    f.add_argument("--epochs", type=_positive, default=10, metavar="N",
                   help="at most this many epochs (default 10)")
    f.add_argument("--batch-size", type=_positive, default=32, metavar="N",
                   help="images per batch (default 32)")
    f.add_argument("--accumulate", type=_positive, default=1, metavar="N",
                   help="batches per optimizer step (default 1)")
    f.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="AdamW (default) or SGD with momentum")
    f.add_argument("--lr", type=float, metavar="LR",
                   help="the classifier's learning rate (default 1e-3 AdamW, 1e-2 SGD; a tenth of that for "
                        "lp_ft)")
    f.add_argument("--last-k", type=_positive, default=2, metavar="K",
                   help="stages trained by --strategy last_k (default 2)")
    f.add_argument("--patience", type=_positive, default=3, metavar="N",
                   help="stop after N epochs without a better validation accuracy (default 3)")
    f.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F",
                   help="share of --data held out for validation when there is no --val (default 0.2)")
    _image_size(f, "training resolution")
    f.add_argument("--weights", metavar="FILE", help="local state dict for the backbone")
    _precision(f, "bfloat16 or fp16 on CUDA; fp32 on the CPU when gradients flow through the network")
    _device(f)
    _workers(f)
    _seed(f, "the split, the initial classifier, crops, flips and shuffles")
    f.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _cache(f, "embedding stores (lp_ft's frozen features)")


def _run(sub) -> None:
    r = sub.add_parser("run", help="run a YAML pipeline; writes report.json, report.md and report.html")
    r.add_argument("pipeline", metavar="PIPELINE.yaml", help="see pipelines/ for examples")
    r.add_argument("--out", metavar="DIR", help="output folder (default: reports/<pipeline name>)")
    _cache(r)
    _on_error(r, default=None)


def _demo(sub) -> None:
    d = sub.add_parser("demo",
                       help="the whole pipeline on a built-in generated dataset (offline), or on --data")
    d.add_argument("--out", default=os.path.join("reports", "demo"), metavar="DIR",
                   help="output folder (default: reports/demo)")
    d.add_argument("--data", metavar="SRC",
                   help="your images instead (folder with train/ and test/, or any source)")
    _cache(d, "embedding stores and the generated dataset")


def _bench(sub) -> None:
    b = sub.add_parser("bench",
                       help="datasets x backbones x methods in one report, with published figures beside")
    b.add_argument("--datasets", required=True, type=_names, metavar="A,B", help="from featx datasets list")
    b.add_argument("--backbones", required=True, type=_names, metavar="X,Y", help="backbones extract takes")
    b.add_argument("--heads", type=_names, default=["logreg"], metavar="H,..",
                   help="default: logreg, the linear probe")
    b.add_argument("--finetune", action="store_true",
                   help="also fine-tune each backbone (LP-FT) on each dataset")
    b.add_argument("--epochs", type=_positive, metavar="N",
                   help="fine-tuning epochs (default: the pipeline's)")
    b.add_argument("--search", action="store_true",
                   help="also fit feature recipes built from the backbones (flip TTA, two more stages, a "
                        "larger resolution, the backbones stacked); the best chosen by cross-validation")
    b.add_argument("--per-class", type=_per_class, default={}, metavar="SPLIT=N,..",
                   help="a seeded subset, e.g. train=500,test=200 images per class")
    _image_size(b)
    _batch_size(b)
    _device(b)
    _seed(b, "the subsets and splits")
    b.add_argument("--root", default=DEFAULT_DATA, metavar="DIR",
                   help=f"datasets folder (default: {DEFAULT_DATA})")
    b.add_argument("--out", default=os.path.join("reports", "bench"), metavar="DIR",
                   help="output folder (default: reports/bench)")
    _cache(b)


def _datasets(sub) -> None:
    ds = sub.add_parser("datasets",
                        help="the standard transfer datasets: list them, or fetch one in featx's layout")
    dsub = ds.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="the datasets featx can fetch, and which are under --root")
    dl.add_argument("--root", default=DEFAULT_DATA, metavar="DIR",
                    help=f"datasets folder (default: {DEFAULT_DATA})")
    dg = dsub.add_parser("get", help="download (or take --archive), verify and convert; prints the folder")
    dg.add_argument("name", metavar="NAME", help="a name featx datasets list shows")
    dg.add_argument("--root", default=DEFAULT_DATA, metavar="DIR",
                    help=f"where datasets go (default: {DEFAULT_DATA})")
    dg.add_argument("--archive", action="append", default=[], metavar="FILE",
                    help="a copy of the dataset's archive fetched by hand (repeat for datasets of several "
                         "files)")


def _cache_commands(sub) -> None:
    c = sub.add_parser("cache", help="inspect and manage the embedding stores")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext, nargs in (
        ("ls", "list the stores: source, backbone, resolution, precision, rows, size, date", None),
        ("info", "what a store holds: provenance, layers, skipped files", 1),
        ("verify", "check stores against their checksums (all when none is named)", "*"),
        ("rm", "delete stores", "*"),
        ("compact", "rewrite the shards of a store that are mostly dead (removed or changed images)", 1),
        ("export", "write a store's rows for other tools: NumPy arrays or Parquet", 1),
    ):
        a = csub.add_parser(name, help=helptext)
        _cache(a)
        if nargs is not None:
            a.add_argument("stores", nargs=nargs, metavar="STORE",
                           help="a path, or a store's name in the cache")
        if name == "info":
            a.add_argument("--json", action="store_true", help="everything, as JSON")
        if name == "rm":
            a.add_argument("--all", action="store_true", help="delete every store in the cache")
        if name == "export":
            a.add_argument("--format", choices=("npy", "parquet"), required=True, help="what to write")
            a.add_argument("--out", required=True, metavar="DIR", help="the folder to write into")
            a.add_argument("--layer", default="embedding", help="which features (default: embedding)")
        if name == "compact":
            a.add_argument("--dead-fraction", type=float, default=0.25, metavar="F",
                           help="rewrite a shard once this fraction of its entries is dead (default 0.25)")


COMMANDS = (_extract, _train, _predict, _finetune, _run, _demo, _bench, _datasets, _cache_commands)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="featx", description="Frozen pretrained features for image collections.")
    p.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p
