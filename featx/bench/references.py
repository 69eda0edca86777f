"""Published figures to show beside featx's own: same backbone weights, same dataset and
split, same linear-probe protocol (L2 logistic regression on frozen penultimate features,
its strength chosen on a validation split held out of train, refit, test scored once).

Each figure names its metric as the source reports it: plain accuracy, or the mean of the
per-class accuracies (featx's ``balanced_accuracy``). A figure measured on a subset names
the subset's size, and is shown only beside a run of that size.
"""
from __future__ import annotations

from dataclasses import dataclass

ACCURACY, MEAN_PER_CLASS = "test_accuracy", "balanced_accuracy"

_ERICSSON = ("Ericsson, Gouk and Hospedales 2021, How Well Do Self-Supervised Models Transfer?, Table 1, "
             "linear evaluation, row Supervised (torchvision resnet50(pretrained=True))")
_SHARED = ("../shared/datasets/README.md, reference figures measured on these files "
           "(C chosen by 5-fold cross-validation on train)")


@dataclass(frozen=True)
class Reference:
    dataset: str
    backbone: str  # as featx names it
    method: str
    metric: str  # ACCURACY or MEAN_PER_CLASS
    value: float  # a fraction
    source: str
    n_train: int | None = None  # a subset's size; None: the whole dataset
    n_test: int | None = None


REFERENCES = (
    *(Reference(d, "torchvision:resnet50:IMAGENET1K_V1", "logreg", m, v, _ERICSSON) for d, m, v in (
        ("cifar10", ACCURACY, 0.9142), ("cifar100", ACCURACY, 0.7390), ("dtd", ACCURACY, 0.7223),
        ("flowers102", MEAN_PER_CLASS, 0.8993), ("pets", MEAN_PER_CLASS, 0.9145),
        ("food101", ACCURACY, 0.6949), ("caltech101", MEAN_PER_CLASS, 0.9018))),
    Reference("hymenoptera", "efficientnet_lite0", "logreg", ACCURACY, 0.941, _SHARED),
    Reference("cifar10", "efficientnet_lite0", "logreg", ACCURACY, 0.784,
              _SHARED + "; 5,000 random training and 2,000 random test images", n_train=5000, n_test=2000),
)


def reference_for(dataset: str, backbone: str, method: str, n_train: int, n_test: int,
                  subset: bool) -> Reference | None:
    """The published figure for this run, if there is one for its data and protocol."""
    for r in REFERENCES:
        if (r.dataset, r.backbone, r.method) != (dataset, backbone, method):
            continue
        whole = r.n_train is None
        if whole == (not subset) and (whole or (r.n_train, r.n_test) == (n_train, n_test)):
            return r
    return None
