"""Report statistics against scipy's."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from featx.bench.stats import mcnemar, wilson


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (146, 153), (153, 153), (8825, 10000)])
def test_the_wilson_interval_is_scipys(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("seed,agree", [(0, 0.9), (1, 0.5), (2, 0.99)])
def test_mcnemars_exact_test_is_a_binomial_test_on_the_disagreements(seed, agree):
    rng = np.random.default_rng(seed)
    a = rng.random(400) < 0.85
    b = np.where(rng.random(400) < agree, a, rng.random(400) < 0.8)
    m = mcnemar(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    assert (m["only_first_right"], m["only_second_right"]) == (only_a, only_b)
    assert m["p_value"] == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9)


def test_identical_methods_are_not_different_and_other_images_are_refused():
    a = np.array([True, False, True])
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="different images"):
        mcnemar(a, a[:2])
