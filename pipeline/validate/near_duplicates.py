"""Exact and near-duplicate prompt groups: normalized text, word 3-shingles, MinHash with LSH banding.

Everything is vectorized (pyarrow for splitting words, numpy for hashing), so a million prompts
group in seconds. Exact duplicates (same normalized text) are collapsed first; MinHash runs on
the distinct texts only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.validate.text_checks import as_text, normalize

N_HASHES = 24
BAND_ROWS = 3  # 8 bands of 3: a pair at Jaccard 0.85 becomes a candidate with p > 0.999
_MASK = np.uint64(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads dense word ids over 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _shingles(texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, row of each shingle) for word 3-shingles; a text of 1-2 words is one shingle."""
    arr = pa.array(as_text(texts).fillna("").array, type=pa.large_string())
    words = pc.utf8_split_whitespace(arr)
    offsets = words.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    flat = words.flatten()
    if len(flat) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    ids = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.uint64)
    w = np.concatenate([_mix(ids + np.uint64(1)), np.zeros(2, np.uint64)])
    n_words = len(ids)
    row_of_word = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(n_words) - offsets[row_of_word]
    row_len = lengths[row_of_word]
    # a shingle starts at every word with two more after it, or at the first word of a short text
    start = (pos <= row_len - 3) | ((pos == 0) & (row_len < 3))
    i = np.flatnonzero(start)
    with np.errstate(over="ignore"):
        second = np.where(row_len[i] >= 2, w[i + 1], np.uint64(0))
        third = np.where(row_len[i] >= 3, w[i + 2], np.uint64(0))
        h = _mix(w[i] * np.uint64(0x9E3779B97F4A7C15) + second * np.uint64(0xC2B2AE3D27D4EB4F) + third)
    return h, row_of_word[i]


def minhash(texts: pd.Series, n_hashes: int = N_HASHES, seed: int = 0) -> np.ndarray:
    """MinHash signatures (rows, n_hashes) of word 3-shingles; rows without words get all-max signatures."""
    h, rows = _shingles(texts)
    sig = np.full((len(texts), n_hashes), np.iinfo(np.uint64).max, dtype=np.uint64)
    if len(h) == 0:
        return sig
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    present = rows[starts]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=n_hashes, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=n_hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n_hashes):
            hk = (h * a[k] + b[k]) >> np.uint64(32)  # multiply-shift: a universal 32-bit hash
            sig[present, k] = np.minimum.reduceat(hk, starts)
    return sig


def duplicate_groups(prompts: pd.Series, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (exact group id, near-duplicate group id). Ids are dense ints; equal id = same group.

    Exact means the same normalized text (case, punctuation and spacing ignored). Near means an
    estimated word 3-shingle Jaccard >= threshold, closed transitively.
    """
    norm = normalize(prompts).fillna("")
    exact, uniques = pd.factorize(norm, sort=False)
    n = len(uniques)
    if n == 0:
        return exact.astype(np.int64), exact.astype(np.int64)
    sig = minhash(pd.Series(uniques))
    empty = np.all(sig == np.iinfo(np.uint64).max, axis=1)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for band in range(N_HASHES // BAND_ROWS):
        cols = sig[:, band * BAND_ROWS : (band + 1) * BAND_ROWS]
        with np.errstate(over="ignore"):
            key = _mix(cols[:, 0])
            for c in range(1, BAND_ROWS):
                key = _mix(key ^ cols[:, c])
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        head = first[inverse]
        cand = np.flatnonzero((head != np.arange(n)) & ~empty)
        if len(cand) == 0:
            continue
        similar = (sig[cand] == sig[head[cand]]).mean(axis=1) >= threshold
        src.append(cand[similar])
        dst.append(head[cand[similar]])
    if src:
        s, d = np.concatenate(src), np.concatenate(dst)
        graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(n, n))
        _, near_of_unique = connected_components(graph, directed=False)
    else:
        near_of_unique = np.arange(n)
    return exact.astype(np.int64), near_of_unique[exact].astype(np.int64)
