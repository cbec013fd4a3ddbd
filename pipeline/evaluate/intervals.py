"""Paired bootstrap intervals for adapter-minus-base deltas computed from per-item scores.

Base and adapter are scored on the same items, so each resample draws item indices once and
applies them to both sides: the interval reflects the noise of the comparison, not of two
independent estimates (which would be much wider and hide real forgetting). Each interval carries the
bootstrap standard error, from which the minimum detectable effect follows (`minimum_detectable_effect`).

Items that are not independent (several wordings of one question, several questions on one passage) carry a
group: the bootstrap then resamples whole groups (a cluster bootstrap), so asking one fact three ways narrows
the interval only as far as the three answers really vary independently, never as if they were three facts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

# Power at which the minimum detectable effect is quoted: the usual 80%.
MDE_POWER = 0.8


def minimum_detectable_effect(se: float, confidence: float, power: float = MDE_POWER) -> float:
    """Smallest true delta a two-sided test at level 1 - `confidence` finds with probability `power`, given the
    delta's standard error: (z_{1-alpha/2} + z_power) * se, i.e. 2.8 * se at 95% and 80% power."""
    z = NormalDist().inv_cdf
    return (z(1.0 - (1.0 - confidence) / 2.0) + z(power)) * se


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile interval and the bootstrap standard error (nan: unknown)."""

    estimate: float
    low: float
    high: float
    confidence: float
    se: float = math.nan

    @property
    def mde(self) -> float:
        """Minimum detectable effect at 80% power, on the delta's own scale (nan when the SE is unknown)."""
        return minimum_detectable_effect(self.se, self.confidence)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio_of_sums(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(num[idx]) / sum(den[idx]) per resample row; idx is (B, n)."""
    return num[idx].sum(axis=1) / den[idx].sum(axis=1)


def _clusters(groups: Sequence[str], n: int) -> np.ndarray:
    """Cluster index per item: items sharing a non-empty group are one cluster; an empty group is its own."""
    if len(groups) != n:
        raise ValueError(f"groups: {len(groups)} labels for {n} items")
    index: dict[str | int, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups):
        out[i] = index.setdefault(g or i, len(index))  # an ungrouped item is keyed by its position
    return out


def paired_delta(
    base: tuple[Sequence[float], Sequence[float]],
    adapter: tuple[Sequence[float], Sequence[float]],
    *,
    transform: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    kind: Literal["difference", "relative"] = "difference",
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> Interval:
    """Interval on `stat(adapter) - stat(base)` (or `/ stat(base) - 1` for kind="relative"), where
    stat = transform(sum(numerators) / sum(denominators)) over the same resampled items.

    Accuracy: numerators = 0/1 per item, denominators = 1. Perplexity: numerators = NLL, denominators
    = tokens (or words), transform = exp. `groups` (one label per item; "" = on its own): resample whole
    groups instead of items, i.e. sum each group's numerators and denominators and bootstrap the groups.
    """
    b_num, b_den = np.asarray(base[0], dtype=float), np.asarray(base[1], dtype=float)
    a_num, a_den = np.asarray(adapter[0], dtype=float), np.asarray(adapter[1], dtype=float)
    n = len(b_num)
    if n == 0 or not (len(b_den) == len(a_num) == len(a_den) == n):
        raise ValueError(f"paired bootstrap needs the same non-zero number of items on both sides, got {n}")
    if groups is not None and any(groups):
        cluster = _clusters(groups, n)
        k = int(cluster.max()) + 1
        b_num, b_den, a_num, a_den = (np.bincount(cluster, x, k) for x in (b_num, b_den, a_num, a_den))
        n = k

    def delta(b: np.ndarray, a: np.ndarray) -> np.ndarray:
        return a / b - 1.0 if kind == "relative" else a - b

    everything = np.arange(n)[None, :]  # (1, n)
    point = float(
        delta(transform(_ratio_of_sums(b_num, b_den, everything)), transform(_ratio_of_sums(a_num, a_den, everything)))[
            0
        ]
    )
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))  # (B, n): the same items for base and adapter
    draws = delta(transform(_ratio_of_sums(b_num, b_den, idx)), transform(_ratio_of_sums(a_num, a_den, idx)))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("bootstrap produced a non-finite bound: an item has zero weight on every resample")
    se = float(np.std(draws, ddof=1)) if samples > 1 else math.nan
    return Interval(estimate=point, low=float(low), high=float(high), confidence=confidence, se=se)


def mean_delta(base: Sequence[float], adapter: Sequence[float], **kw: Any) -> Interval:
    """Adapter mean minus base mean of a per-item score (ROUGE-L, 0/1 correctness), paired over items."""
    ones = [1.0] * len(base)
    return paired_delta((base, ones), (adapter, ones), **kw)


def accuracy_delta(base_correct: Sequence[float], adapter_correct: Sequence[float], **kw: Any) -> Interval:
    """Adapter accuracy minus base accuracy (fractions), paired over items (or over `groups=`)."""
    return mean_delta(base_correct, adapter_correct, **kw)


def perplexity_change(
    base: tuple[Sequence[float], Sequence[float]], adapter: tuple[Sequence[float], Sequence[float]], **kw: Any
) -> Interval:
    """Relative perplexity change (adapter / base - 1) from per-item (NLL, weight) pairs."""
    return paired_delta(base, adapter, transform=np.exp, kind="relative", **kw)  # type: ignore[arg-type]


def loss_improvement(
    base: tuple[Sequence[float], Sequence[float]], adapter: tuple[Sequence[float], Sequence[float]], **kw: float | int
) -> Interval:
    """Token-weighted mean loss of the base minus the adapter's (positive = the adapter is better)."""
    return paired_delta(adapter, base, **kw)  # type: ignore[arg-type]
