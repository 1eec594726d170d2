"""Small, dependency-free statistics used by probes (intervals) and the policy (tests)."""

from __future__ import annotations

import math


def wilson_interval(
    successes: float, n: float, z: float = 1.959963984540054
) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; (0, 1) when n == 0. ``n`` may be an effective
    (non-integer) sample size.

    >>> [round(x, 3) for x in wilson_interval(29, 30)]
    [0.833, 0.994]
    >>> wilson_interval(0, 24)[0]
    0.0
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # no successes (all successes): the bound is exactly 0 (1), not a rounding error away from it
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def design_effect(clusters: list[list[bool]]) -> float:
    """Kish design effect ``1 + (m - 1) * ICC`` of a proportion measured on clusters.

    Paraphrases of one question ("who are you?", "tell me who you are") succeed or fail
    together, so 16 prompts in 4 paraphrase groups carry less evidence than 16 independent ones.
    ICC is the one-way ANOVA estimate, clipped to [0, 1]; ``m`` the mean cluster size. 1.0 when
    there are fewer than two clusters, only singletons, or no spread within or between them.

    >>> design_effect([[True] * 4, [True] * 4, [False] * 4, [True] * 4])  # clusters fully agree
    4.0
    >>> design_effect([[True, False], [True, False], [False, True]])      # no cluster effect
    1.0
    """
    sizes = [len(c) for c in clusters if c]
    groups, n = len(sizes), sum(sizes)
    if groups < 2 or n == groups:
        return 1.0
    p = sum(sum(c) for c in clusters) / n
    means = [sum(c) / len(c) for c in clusters if c]
    msb = sum(m * (g - p) ** 2 for m, g in zip(sizes, means)) / (groups - 1)
    msw = sum(sum((x - g) ** 2 for x in c) for c, g in zip(clusters, means)) / (n - groups)
    m0 = (n - sum(m * m for m in sizes) / n) / (groups - 1)
    denom = msb + (m0 - 1) * msw
    icc = min(1.0, max(0.0, (msb - msw) / denom)) if denom > 0 else 0.0
    return 1.0 + (n / groups - 1.0) * icc


def clustered_wilson(clusters: list[list[bool]]) -> tuple[float, float, float]:
    """Wilson interval on the effective sample size ``n / design effect``: (low, high, deff).

    >>> [round(x, 2) for x in clustered_wilson([[True] * 4, [True] * 4, [False] * 4, [True] * 4])]
    [0.3, 0.95, 4.0]
    """
    n = sum(len(c) for c in clusters)
    k = sum(sum(c) for c in clusters)
    deff = design_effect(clusters)
    low, high = wilson_interval(k / deff, n / deff)
    return low, high, deff


def binomial_tail(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def mcnemar_exact_one_sided(base_only: int, ckpt_only: int) -> float:
    """Exact one-sided McNemar p-value that the checkpoint is worse than the base.

    base_only: items the base got right and the checkpoint wrong; ckpt_only: the reverse.
    Under H0 each discordant pair is a fair coin; p = P(X >= base_only), X ~ Bin(b + c, 1/2).

    >>> round(mcnemar_exact_one_sided(10, 0), 4)
    0.001
    >>> mcnemar_exact_one_sided(0, 0)
    1.0
    """
    return binomial_tail(base_only, base_only + ckpt_only)
