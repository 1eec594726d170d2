"""Small, dependency-free statistics used by probes (intervals) and the policy (tests)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; (0, 1) when n == 0.

    >>> [round(x, 3) for x in wilson_interval(29, 30)]
    [0.833, 0.994]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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
