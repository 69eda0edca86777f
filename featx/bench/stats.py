"""How sure a report is: intervals on test accuracies and paired tests between methods.

Every method is scored once on the same test images, so two methods are compared image
by image: McNemar's exact test looks only at the images on which they disagree (one
right, the other wrong); under "no difference" each such image is a fair coin. Each
accuracy carries a Wilson score interval, which stays inside [0, 1] and keeps its
coverage on small test sets, where the normal approximation does not.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
NOISE = 0.05  # p-values at or above this: "within noise"


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (95 % by default)."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """McNemar's exact test of two methods on the same images (boolean arrays: was each
    image classified right): the two-sided p-value and the discordant counts."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a_right.shape != b_right.shape:
        raise ValueError("the two methods were scored on different images")
    only_a, only_b = int(np.sum(a_right & ~b_right)), int(np.sum(~a_right & b_right))
    n, k = only_a + only_b, min(only_a, only_b)
    # twice the smaller tail of Binomial(n, 1/2), at most 1
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"p_value": min(1.0, 2 * tail), "only_first_right": only_a, "only_second_right": only_b}
