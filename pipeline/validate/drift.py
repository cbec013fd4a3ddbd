"""Drift of a dataset against the previous snapshot: category shares, response lengths, vocabulary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.validate.text_checks import as_text, normalize_arrow

# Vocabulary is compared on a deterministic sample: the share of unseen words is stable long before
# a million rows, and splitting every word of two big snapshots would dominate validation time.
VOCAB_SAMPLE_ROWS = 50_000


def category_shift(current: pd.Series, previous: pd.Series) -> float:
    """Total variation distance between the category shares (0: same mix, 1: disjoint)."""
    p = current.fillna("<none>").value_counts(normalize=True)
    q = previous.fillna("<none>").value_counts(normalize=True)
    both = p.index.union(q.index)
    return float(0.5 * np.abs(p.reindex(both, fill_value=0) - q.reindex(both, fill_value=0)).sum())


def length_shift(current: pd.Series, previous: pd.Series) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of text lengths in characters."""
    a = np.sort(as_text(current).str.len().fillna(0).to_numpy(dtype=np.int64))
    b = np.sort(as_text(previous).str.len().fillna(0).to_numpy(dtype=np.int64))
    if len(a) == 0 or len(b) == 0:
        return 0.0
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _words(texts: pd.Series) -> pa.Array:
    sample = texts if len(texts) <= VOCAB_SAMPLE_ROWS else texts.iloc[:: len(texts) // VOCAB_SAMPLE_ROWS]
    return pc.list_flatten(pc.utf8_split_whitespace(normalize_arrow(sample)))


def new_vocabulary_share(current: pd.Series, previous: pd.Series) -> float:
    """Share of word occurrences in `current` whose word never occurs in `previous`."""
    cur = _words(current)
    if len(cur) == 0:
        return 0.0
    seen = pc.is_in(cur, value_set=pc.unique(_words(previous)))
    return float(1.0 - pc.mean(seen.cast(pa.float64())).as_py())
