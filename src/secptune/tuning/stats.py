"""Whether a tuned model is better than the zero-shot one on the same test texts.

- Each accuracy with its 95% Wilson score interval (Wilson 1927: good coverage at the sizes and
  accuracies here, where the normal approximation's is poor near 0 or 1).
- The gain (tuned - zero-shot, in accuracy) with a 95% paired bootstrap interval: texts are
  resampled with replacement, both models' answers on a text kept together.
- McNemar's exact test (two-sided) of "the two models are equally often right": under it,
  each of the n discordant texts (one model right, the other wrong) is the tuned model's with
  probability 1/2, so the p-value is the two-sided binomial tail of the observed split.
  Its one-sided form (`gain_p`) is what tuning asks of a dev gain before it keeps anything
  other than its start (`tuning.loop`, selection "significant").

A gain is called significant when p < 0.05 and the interval excludes 0.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 10_000


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _lower_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    # log-space binomial terms, so that n in the thousands neither overflows nor underflows
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value for `only_a` texts only model A gets right and `only_b` only
    model B does (the binomial test of the discordant split against 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * _lower_tail(min(only_a, only_b), n))


def mcnemar_one_sided(only_new: int, only_old: int) -> float:
    """One-sided exact p-value of "model new is right more often than model old": the
    probability of at least `only_new` of the discordant texts going to new under a fair
    split (1 when new is right on no more of them than old)."""
    n = only_new + only_old
    if only_new <= only_old:
        return 1.0
    return min(1.0, _lower_tail(only_old, n))


def gain_p(right_old, right_new) -> float:
    """`mcnemar_one_sided` of two models' per-text right/wrong flags on the same texts."""
    right_old, right_new = np.asarray(right_old, dtype=bool), np.asarray(right_new, dtype=bool)
    if right_old.shape != right_new.shape:
        raise ValueError("right/wrong flags of the same texts expected")
    return mcnemar_one_sided(int((right_new & ~right_old).sum()), int((right_old & ~right_new).sum()))


def paired_bootstrap(right_a: np.ndarray, right_b: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(right_b) - mean(right_a) over texts resampled in pairs."""
    diff = right_b.astype(np.float64) - right_a.astype(np.float64)
    if diff.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 1000):       # bounded memory for large test sets
        rows = rng.integers(0, diff.size, (min(1000, samples - start), diff.size))
        means[start:start + len(rows)] = diff[rows].mean(1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def compare_predictions(before, after, truth, seed: int = 0) -> dict:
    """The zero-shot (`before`) and tuned (`after`) predictions on the same texts: each
    accuracy with its interval, the gain with its paired interval, McNemar's p-value, and
    whether the gain is significant."""
    before, after, truth = (np.asarray(x, dtype=np.int64) for x in (before, after, truth))
    if not (before.shape == after.shape == truth.shape):
        raise ValueError("predictions and labels of the same texts expected")
    right_a, right_b = before == truth, after == truth
    n = int(truth.size)
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    low, high = paired_bootstrap(right_a, right_b, seed=seed)
    p = mcnemar_exact(only_a, only_b)
    gain = float(right_b.mean() - right_a.mean()) if n else 0.0
    return {
        "texts": n,
        "zero_shot": {"accuracy": float(right_a.mean()) if n else 0.0, "interval": wilson_interval(int(right_a.sum()), n)},
        "tuned": {"accuracy": float(right_b.mean()) if n else 0.0, "interval": wilson_interval(int(right_b.sum()), n)},
        "gain": gain, "gain_interval": (low, high),
        "only_zero_shot_right": only_a, "only_tuned_right": only_b, "mcnemar_p": p,
        "significant": bool(p < 0.05 and (low > 0 or high < 0)),
    }


def summary_line(comparison: dict) -> str:
    """'zero-shot 69.6% [65.4, 73.5], tuned 73.0% [68.9, 76.7]: +3.4 points [+1.0, +5.8],
    McNemar p = 0.006 (31 vs 14 texts), significant' for a person to read."""
    z, t = comparison["zero_shot"], comparison["tuned"]
    low, high = comparison["gain_interval"]
    verdict = "significant" if comparison["significant"] else "not significant"
    return (f"zero-shot {z['accuracy']:.1%} [{z['interval'][0]:.1%}, {z['interval'][1]:.1%}], "
            f"tuned {t['accuracy']:.1%} [{t['interval'][0]:.1%}, {t['interval'][1]:.1%}] on {comparison['texts']} "
            f"texts: {100 * comparison['gain']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], McNemar p = "
            f"{comparison['mcnemar_p']:.3g} ({comparison['only_tuned_right']} texts only tuned gets right, "
            f"{comparison['only_zero_shot_right']} only zero-shot), {verdict}")
