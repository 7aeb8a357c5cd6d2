"""Goodness-of-fit checks for the env tests' random draws (Pearson's chi-square), written
out so that the tests need no statistics package.

The threshold is the chi-square quantile at a false-alarm probability of about 3e-7 (z = 5),
from the Wilson-Hilferty approximation, which is conservative (too high) for 1 or 2 degrees of
freedom: a correct sampler essentially never fails, while the biases these tests guard
against (a skewed uniform, a generator missing its mixing steps) push the statistic far past
it at the sample sizes used.
"""

import math

import numpy as np

Z = 5.0


def threshold(dof: int) -> float:
    """Upper chi-square quantile for `dof` degrees of freedom at z = Z (Wilson-Hilferty)."""
    k = 2.0 / (9.0 * dof)
    return dof * (1.0 - k + Z * math.sqrt(k)) ** 3


def statistic(counts, expected) -> float:
    counts, expected = np.asarray(counts, np.float64), np.asarray(expected, np.float64)
    return float(((counts - expected) ** 2 / expected).sum())


def assert_uniform(samples, categories, what: str, min_expected: float = 20.0):
    """Samples (ints) uniform over `categories` (a list of the allowed values): no sample
    outside them, and a chi-square statistic below the threshold."""
    samples = np.asarray(samples).ravel()
    categories = np.asarray(sorted(set(np.asarray(categories).ravel().tolist())))
    outside = np.setdiff1d(samples, categories)
    assert outside.size == 0, f"{what}: values {outside[:10].tolist()} outside the allowed set"
    assert len(categories) >= 2, f"{what}: a uniform draw needs at least 2 categories"
    expected = samples.size / len(categories)
    assert expected >= min_expected, f"{what}: too few samples ({samples.size}) for {len(categories)} categories"
    counts = (samples[:, None] == categories[None, :]).sum(0)
    stat, limit = statistic(counts, np.full(len(categories), expected)), threshold(len(categories) - 1)
    assert stat < limit, (
        f"{what}: chi-square {stat:.1f} >= {limit:.1f} over {len(categories)} categories (counts {counts.tolist()})"
    )


def assert_binomial(successes: int, trials: int, p: float, what: str):
    """A success count consistent with probability p: within Z standard deviations."""
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) < Z * sd, (
        f"{what}: {successes} of {trials}, expected {trials * p:.0f} +- {Z * sd:.0f}"
    )
