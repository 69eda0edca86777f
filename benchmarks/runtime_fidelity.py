"""How far each CPU runtime of benchmarks/cpu_runtimes.py moves the features from fp32's,
judged by the fidelity rule: a runtime is acceptable if, on every dataset, its features'
mean cosine similarity with fp32's features of the same images is at least 0.995 and its
linear probe's test accuracy is within 0.3 points of fp32's.

The images (hymenoptera's train and val; a seeded CIFAR-10 draw of ``--cifar-per-class``
training images of each class, and ``--cifar-test-per-class`` test images of each class, 0
for the whole test split) are decoded once with the backbone's own preprocessing, so every
runtime sees identical input tensors. The fp32 reference is eager torch, or with
``--reference openvino_fp32`` OpenVINO's fp32 (faster), used only after its features are
checked against eager torch fp32's on ``--check-images`` images of each test split (mean
cosine >= 0.99999; otherwise eager fp32 is run on everything instead).

For each runtime: mean and min cosine with fp32 (and mean cosine with the frozen bf16 graph
featx uses), the probe's test accuracy (featx's logreg head, C chosen on a validation share
of train, as benchmarks/precision_fidelity.py does; the test split scored once) and the same
probe at fp32's C, each as a difference to fp32 in points with the paired test images'
discordant counts and a 95 % paired-bootstrap interval. The verdict is "passes" or "fails"
when the whole interval lies inside or outside +-0.3 points, else "unresolved" (the probe
is too small to decide); ``passes_point_estimate`` applies the rule to the point estimate.
With no discordant image the interval is [0, 0]: it says only that this test split cannot
tell the two apart. One hymenoptera image is 0.65 points, one CIFAR test image (all 10,000)
0.01; there ~200 discordant images already make the interval about +-0.27 points wide.
Prints JSON.

    python benchmarks/runtime_fidelity.py [--runtimes frozen_bf16,openvino_bf16,eager_bf16]
        [--cifar-per-class 500] [--cifar-test-per-class 0] [--reference openvino_fp32]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from cpu_runtimes import TORCH, build, features, missing
from precision_fidelity import _splits

from featx.backbones import load_backbone
from featx.data.sources import SubsetSource
from featx.heads import LogRegHead
from featx.heads.fitting import align_labels, fit

MIN_COSINE, MAX_POINTS = 0.995, 0.3  # the fidelity rule
MATCH = 0.99999  # mean cosine an fp32 reference must have with eager torch fp32
DEFAULT = "frozen_bf16,eager_bf16,openvino_fp32,openvino_bf16,onnxruntime_fp32"


def decoded(source, pre) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 (N, 3, S, S) images of a source and their labels."""
    images = [pre.decode(source.read(item)) for item in source.items]
    return torch.stack(images), np.array([item.label for item in source.items])


def datasets(pre, per_class: int, test_per_class: int) -> dict:
    """{name: (train (images, labels), test (images, labels into train's classes))}."""
    out = {}
    for name in ("hymenoptera", "cifar10"):
        train, test = _splits(name, per_class)
        if name == "cifar10" and test_per_class:
            test = SubsetSource(test, test_per_class, seed=0)
        (xtr, ytr), (xte, yte) = decoded(train, pre), decoded(test, pre)
        out[name] = ((xtr, ytr), (xte, align_labels(yte, test.classes, train.classes, test.spec)))
    return out


def embed(run, images: torch.Tensor, pre, batch: int, channels_last: bool):
    """(features (N, D) float32, seconds in ``run``) of uint8 images, batch by batch."""
    out, seconds = [], 0.0
    for i in range(0, len(images), batch):
        x = pre.normalize(images[i:i + batch])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        y = run(x)
        seconds += time.perf_counter() - start
        out.append(features(y))
    return np.concatenate(out), seconds


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def probe(train, test, C: float | None = None) -> tuple[np.ndarray, float]:
    """(per test image: correct?, C) of the logreg probe: C chosen on validation, or given."""
    if C is None:
        model, metrics, _ = fit(*train, "logreg")
        C = metrics["best_params"]["C"]
    else:
        model = LogRegHead()._build(C).fit(*train)
    return model.predict(test[0]) == test[1], C


def paired(right: np.ndarray, ref: np.ndarray, draws: int = 20000) -> dict:
    """Accuracy difference to the reference on the same test images, in points, with the
    discordant counts and a 95 % paired-bootstrap interval (resampling test images: only
    the discordant ones move the difference, so the draw is multinomial over the three kinds)."""
    n, gain, loss = len(ref), int(np.sum(right & ~ref)), int(np.sum(~right & ref))
    k = np.random.default_rng(0).multinomial(n, [gain / n, loss / n, 1 - (gain + loss) / n], draws)
    lo, hi = np.percentile(100 * (k[:, 0] - k[:, 1]) / n, [2.5, 97.5])
    return {"points": round(100 * (gain - loss) / n, 2), "interval95": [round(lo, 2), round(hi, 2)],
            "only_runtime_right": gain, "only_fp32_right": loss}


def verdict(cosine: float, diff: dict) -> str:
    lo, hi = diff["interval95"]
    if cosine < MIN_COSINE or lo > MAX_POINTS or hi < -MAX_POINTS:
        return "fails"
    return "passes" if -MAX_POINTS <= lo and hi <= MAX_POINTS else "unresolved"


def run_all(run, sets: dict, pre, batch: int, channels_last: bool) -> tuple[dict, float]:
    """({dataset: (train features, test features)}, images/s over all of them)."""
    feats, seconds, images = {}, 0.0, 0
    for name, splits in sets.items():
        pairs = [embed(run, x, pre, batch, channels_last) for x, _ in splits]
        feats[name] = tuple(f for f, _ in pairs)
        seconds += sum(s for _, s in pairs)
        images += sum(len(x) for x, _ in splits)
    return feats, images / seconds


def compare(feats: dict, ref: dict, frozen: dict | None, sets: dict, fp32: dict) -> dict:
    """One runtime's row per dataset against fp32's features and probe."""
    rows = {}
    for name, (train, test) in sets.items():
        cos = cosines(np.concatenate(feats[name]), np.concatenate(ref[name]))
        right, C = probe((feats[name][0], train[1]), (feats[name][1], test[1]))
        at_c, _ = probe((feats[name][0], train[1]), (feats[name][1], test[1]), fp32[name]["C"])
        own, fixed = paired(right, fp32[name]["right"]), paired(at_c, fp32[name]["right"])
        point = bool(cos.mean() >= MIN_COSINE and abs(own["points"]) <= MAX_POINTS)
        rows[name] = {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                      "accuracy": round(float(right.mean()), 4), "C": C,
                      "minus_fp32": own, "at_fp32_C_minus_fp32": fixed, "passes_point_estimate": point,
                      "verdict": verdict(cos.mean(), own), "verdict_at_fp32_C": verdict(cos.mean(), fixed)}
        if frozen is not None:
            to_frozen = cosines(np.concatenate(feats[name]), np.concatenate(frozen[name]))
            rows[name]["mean_cosine_to_frozen_bf16"] = round(float(to_frozen.mean()), 6)
    return rows


def eager_fp32(bb):
    def run(x):
        with torch.inference_mode():
            return bb.model(x)
    return run


def checked(bb, sets: dict, batch: int, feats: dict, check: int) -> dict:
    """OpenVINO fp32's features against eager torch fp32's on ``check`` evenly spaced
    images of each test split."""
    cos = []
    for name, (_, (x, _)) in sets.items():
        pick = np.linspace(0, len(x) - 1, min(check, len(x))).astype(int)
        eager, _ = embed(eager_fp32(bb), x[pick], bb.preprocessing, batch, True)
        cos.append(cosines(feats[name][1][pick], eager))
    cos = np.concatenate(cos)
    return {"images": len(cos), "mean_cosine_to_eager_fp32": round(float(cos.mean()), 7),
            "min_cosine_to_eager_fp32": round(float(cos.min()), 7), "required_mean": MATCH,
            "passes": bool(cos.mean() >= MATCH)}


def reference(bb, sets: dict, batch: int, which: str, check: int) -> tuple[dict, dict, dict]:
    """fp32's features, its probe per dataset ({accuracy, C, right}) and its report."""
    report = {"reference": "eager_fp32"}
    if which == "openvino_fp32":
        size = bb.preprocessing.image_size
        run, _ = build("openvino_fp32", bb, batch, torch.zeros(batch, 3, size, size))
        feats, speed = run_all(run, sets, bb.preprocessing, batch, False)
        report = {"reference": which, "check": checked(bb, sets, batch, feats, check)}
        if not report["check"]["passes"]:
            report["reference"] = "eager_fp32 (openvino_fp32 failed the check)"
    if report["reference"].startswith("eager_fp32"):
        feats, speed = run_all(eager_fp32(bb), sets, bb.preprocessing, batch, True)
    fp32 = {}
    for name, (train, test) in sets.items():
        right, C = probe((feats[name][0], train[1]), (feats[name][1], test[1]))
        fp32[name] = {"train_images": len(train[1]), "test_images": len(test[1]),
                      "accuracy": round(float(right.mean()), 4), "C": C, "right": right}
    return feats, fp32, {**report, "images_per_second": round(speed, 1)}


def assess(name: str, bb, sets: dict, batch: int, ref: dict, fp32: dict, frozen: dict | None):
    """(runtime ``name``'s report, its features): build it, embed every image, compare."""
    size = bb.preprocessing.image_size
    example = torch.zeros(batch, 3, size, size)
    if name in TORCH:
        example = example.contiguous(memory_format=torch.channels_last)
    run, built = build(name, bb, batch, example)
    feats, speed = run_all(run, sets, bb.preprocessing, batch, name in TORCH)
    rows = compare(feats, ref, frozen if name != "frozen_bf16" else None, sets, fp32)
    worst = min((r["verdict"] for r in rows.values()), key=["fails", "unresolved", "passes"].index)
    return {**built, "images_per_second": round(speed, 1), "verdict": worst,
            "passes_point_estimate": all(r["passes_point_estimate"] for r in rows.values()),
            **rows}, feats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--runtimes", default=DEFAULT, help="comma-separated, cpu_runtimes.py's names")
    p.add_argument("--cifar-per-class", type=int, default=100)
    p.add_argument("--cifar-test-per-class", type=int, default=200, help="0: all 10,000")
    p.add_argument("--reference", default="eager_fp32", choices=("eager_fp32", "openvino_fp32"))
    p.add_argument("--check-images", type=int, default=256,
                   help="per test split, to check an openvino_fp32 reference against eager fp32")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    start = time.perf_counter()
    bb = load_backbone(args.backbone)
    bb.model.to(memory_format=torch.channels_last)
    sets = datasets(bb.preprocessing, args.cifar_per_class, args.cifar_test_per_class)
    ref, fp32, report = reference(bb, sets, args.batch_size, args.reference, args.check_images)
    out = {"backbone": args.backbone, "threads": torch.get_num_threads(),
           "rule": {"min_mean_cosine": MIN_COSINE, "max_accuracy_points_from_fp32": MAX_POINTS},
           "fp32": {**report, **{k: {f: v for f, v in r.items() if f != "right"} for k, r in fp32.items()}},
           "runtimes": {}}
    frozen = None
    for name in args.runtimes.split(","):
        if missing(name):
            out["runtimes"][name] = {"skipped": f"{missing(name)} not installed"}
            continue
        out["runtimes"][name], feats = assess(name, bb, sets, args.batch_size, ref, fp32, frozen)
        frozen = feats if name == "frozen_bf16" else frozen
        print(json.dumps({name: out["runtimes"][name]}), file=sys.stderr, flush=True)  # progress
    out["seconds"] = round(time.perf_counter() - start)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
