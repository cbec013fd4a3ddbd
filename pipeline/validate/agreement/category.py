"""Agreement on the category: Fleiss' kappa, Krippendorff's alpha (nominal), pairwise Cohen's kappa, and
percentile bootstrap intervals over tasks (exact multinomial resampling of the distinct count vectors)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.validate.agreement.frame import _code, _Coded, _pairs_within, check_frame

__all__ = [
    "Estimate",
    "bootstrap_agreement",
    "category_table",
    "cohen_kappa",
    "coincidence_matrix",
    "fleiss_kappa",
    "krippendorff_alpha",
    "pairwise_cohen",
]


def category_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tasks x categories: how many annotators chose each category (every task with a category label)."""
    return _category_table(_code(check_frame(frame)))


def _category_table(coded: _Coded) -> pd.DataFrame:
    counts = _category_counts(coded)
    used = counts.sum(axis=1) > 0
    index = pd.Index(coded.task_ids[used], name="task_id")
    return pd.DataFrame(counts[used], index=index, columns=pd.Index(coded.categories, name="category"))


def _category_counts(coded: _Coded) -> np.ndarray:
    """Dense tasks x categories label counts (every task, in task code order)."""
    has = coded.category >= 0
    k = len(coded.categories)
    flat = np.bincount(coded.task[has] * k + coded.category[has], minlength=coded.n_tasks * k)
    return flat.reshape(coded.n_tasks, k)


def _counts(table: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The rows of a units x categories count table that hold two or more labels, as floats."""
    counts = np.asarray(table, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"a count table is units x categories; got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("a count table cannot hold negative counts")
    return counts[counts.sum(axis=1) >= 2]


def fleiss_kappa(table: pd.DataFrame | np.ndarray) -> float:
    """Fleiss' kappa of a tasks x categories count table (tasks with < 2 labels ignored); NaN when undefined."""
    counts = _counts(table)
    return float(_stats_kappa(*_sums(counts, np.ones(len(counts)))))


def krippendorff_alpha(table: pd.DataFrame | np.ndarray) -> float:
    """Krippendorff's alpha (nominal) of a units x values count table, through the coincidence matrix.

    alpha = 1 - D_o / D_e with D_o = (n - sum_c o_cc) / n and D_e = (n^2 - sum_c n_c^2) / (n (n - 1)),
    n_c the coincidence matrix's margins. Units with one value are unpairable and ignored. NaN when
    undefined (no pairable unit, or a single value throughout).
    """
    o = coincidence_matrix(table)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = n * n - (n_c * n_c).sum()
    if n < 2 or expected <= 0:
        return math.nan
    return float(1.0 - (n - 1.0) * (n - np.trace(o)) / expected)


def coincidence_matrix(table: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Krippendorff's coincidence matrix o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1) over pairable units."""
    counts = _counts(table)
    weight = 1.0 / (counts.sum(axis=1) - 1.0)
    o = (counts * weight[:, None]).T @ counts
    return o - np.diag((counts * weight[:, None]).sum(axis=0))


def _per_task_stats(counts: np.ndarray) -> np.ndarray:
    """Per task [P_i, a_i, m_i, n_i1..n_iK]: the sums that Fleiss' kappa and alpha need, for resampling."""
    m = counts.sum(axis=1)
    same = (counts * (counts - 1.0)).sum(axis=1)  # ordered pairs of labels that agree
    return np.column_stack([same / (m * (m - 1.0)), same / (m - 1.0), m, counts])


def _sums(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted column sums of the per-task stats, with the number of tasks in front: [N, P, A, n, n_1..n_K]."""
    stats = _per_task_stats(counts)
    return np.concatenate([[weights.sum()], weights @ stats]) if len(counts) else np.full(4 + counts.shape[1], 0.0)


def _stats_kappa(n_tasks: Any, p_sum: Any, _a: Any, n: Any, *n_c: Any) -> Any:
    """Fleiss' kappa from resampled sums (scalars or arrays); NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p_bar = p_sum / n_tasks
        p_e = sum(x * x for x in n_c) / (n * n)
        return np.where((n > 0) & (p_e < 1.0), (p_bar - p_e) / (1.0 - p_e), np.nan)


def _stats_alpha(_n_tasks: Any, _p: Any, a_sum: Any, n: Any, *n_c: Any) -> Any:
    """Krippendorff's nominal alpha from resampled sums (scalars or arrays); NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = n * n - sum(x * x for x in n_c)
        return np.where((n > 1) & (expected > 0), 1.0 - (n - 1.0) * (n - a_sum) / expected, np.nan)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval (NaN where undefined)."""

    value: float
    ci_low: float
    ci_high: float


def bootstrap_agreement(
    table: pd.DataFrame | np.ndarray, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, Estimate]:
    """Fleiss' kappa and Krippendorff's alpha with percentile intervals from resampling tasks (seeded).

    Both figures depend on a task only through its count vector, so tasks are grouped by distinct vector
    and a resample is a multinomial draw of how often each vector appears: exactly the task bootstrap,
    in O(n_boot x distinct vectors) instead of O(n_boot x tasks).
    """
    counts = _counts(table)
    out = {"fleiss_kappa": fleiss_kappa(counts), "krippendorff_alpha": krippendorff_alpha(counts)}
    if len(counts) == 0 or n_boot < 1:
        return {k: Estimate(v, math.nan, math.nan) for k, v in out.items()}
    patterns, freq = _distinct_rows(counts)
    draws = np.random.default_rng(seed).multinomial(len(counts), freq / freq.sum(), size=n_boot).astype(np.float64)
    sums = np.column_stack([draws.sum(axis=1), draws @ _per_task_stats(patterns)]).T
    replicates = {"fleiss_kappa": _stats_kappa(*sums), "krippendorff_alpha": _stats_alpha(*sums)}
    tail = (1.0 - ci) / 2.0
    result = {}
    for name, value in out.items():
        reps = replicates[name]
        if math.isnan(value) or not np.isfinite(reps).any():
            result[name] = Estimate(value, math.nan, math.nan)
            continue
        low, high = np.nanquantile(reps, [tail, 1.0 - tail])
        result[name] = Estimate(value, float(low), float(high))
    return result


def _distinct_rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a count table and how often each occurs (rows packed into one integer when they fit)."""
    k = counts.shape[1]
    base = int(counts.max()) + 1
    if k * math.log2(base) <= 62:
        key = counts.astype(np.int64) @ (base ** np.arange(k, dtype=np.int64))
        _, first, freq = np.unique(key, return_index=True, return_counts=True)
        return counts[first], freq
    return np.unique(counts, axis=0, return_counts=True)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels on the same items (aligned); NaN when expected agreement is 1."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs aligned labels; got {len(a)} and {len(b)}")
    if not len(a):
        return math.nan
    codes, _ = pd.factorize(pd.Series([*a, *b], dtype=object))
    if (codes < 0).any():
        raise ValueError("cohen_kappa got a missing label; keep only items both raters labeled")
    ca, cb = codes[: len(a)], codes[len(a) :]
    k = int(codes.max()) + 1
    p_o = float(np.mean(ca == cb))
    p_e = float(np.bincount(ca, minlength=k) @ np.bincount(cb, minlength=k)) / len(a) ** 2
    return math.nan if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def pairwise_cohen(frame: pd.DataFrame, *, min_overlap: int = 10) -> pd.DataFrame:
    """Cohen's kappa for every annotator pair that labeled a category on >= min_overlap common tasks.

    Columns: annotator_a, annotator_b (a < b), tasks, agreement (observed), kappa. Their mean is Light's kappa.
    """
    return _pairwise_cohen(_code(check_frame(frame)), min_overlap)


def _pairwise_cohen(coded: _Coded, min_overlap: int) -> pd.DataFrame:
    rows = np.flatnonzero(coded.category >= 0)
    i, j = _pairs_within(coded.task[rows])
    i, j = rows[i], rows[j]
    swap = coded.annotator[i] > coded.annotator[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    n_ann, k = len(coded.annotators), max(len(coded.categories), 1)
    pair, pair_key = pd.factorize(coded.annotator[i] * n_ann + coded.annotator[j], sort=True)
    n_pairs = len(pair_key)
    tasks = np.bincount(pair, minlength=n_pairs).astype(np.float64)
    ci, cj = coded.category[i], coded.category[j]
    agree = np.bincount(pair, weights=(ci == cj), minlength=n_pairs)
    margin_a = np.bincount(pair * k + ci, minlength=n_pairs * k).reshape(n_pairs, k)
    margin_b = np.bincount(pair * k + cj, minlength=n_pairs * k).reshape(n_pairs, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o = agree / tasks
        p_e = (margin_a * margin_b).sum(axis=1) / (tasks * tasks)
        kappa = np.where(p_e < 1.0, (p_o - p_e) / (1.0 - p_e), np.nan)
    keep = tasks >= min_overlap
    key = np.asarray(pair_key, dtype=np.int64)[keep]
    return pd.DataFrame(
        {
            "annotator_a": coded.annotators[key // n_ann],
            "annotator_b": coded.annotators[key % n_ann],
            "tasks": tasks[keep].astype(np.int64),
            "agreement": p_o[keep],
            "kappa": kappa[keep],
        }
    )
