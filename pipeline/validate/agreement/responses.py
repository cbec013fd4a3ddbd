"""Agreement on the response: ROUGE-L F1 between annotators' texts (bit-parallel LCS on whitespace tokens),
per annotator pair and per task."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.validate.agreement.frame import _code, _Coded, _pairs_within, check_frame

__all__ = ["MAX_LCS_TOKENS", "lcs_length", "response_pairs", "rouge_l_f1", "rouge_l_f1_batch"]

# Tokens of a text that ROUGE-L looks at; beyond this the similarity is that of the first tokens.
MAX_LCS_TOKENS = 2048
_WORD = 64  # pairs whose shorter text has at most this many tokens take the vectorized LCS
_CHUNK_BYTES = 1 << 24  # memory for one chunk's token-comparison cube


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int steps."""
    if len(a) > len(b):
        a, b = b, a
    if not a:
        return 0
    masks: dict[Hashable, int] = {}
    for pos, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << pos)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_f1(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts on whitespace tokens (symmetric; two empty texts score 1.0)."""
    return float(rouge_l_f1_batch([a], [b])[0])


def rouge_l_f1_batch(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 = 2 LCS / (len_a + len_b) for aligned text pairs, vectorized; tokens capped at MAX_LCS_TOKENS."""
    if len(a) != len(b):
        raise ValueError(f"rouge_l_f1_batch needs aligned texts; got {len(a)} and {len(b)}")
    codes, uniques = pd.factorize(pd.Series([*a, *b], dtype=object))
    if (codes < 0).any():
        raise ValueError("rouge_l_f1_batch got a missing text; drop pairs without a response first")
    ids, starts, lengths = _token_ids(uniques)
    return _rouge_pairs(ids, starts, lengths, codes[: len(a)].astype(np.int64), codes[len(a) :].astype(np.int64))


def _token_ids(texts: pd.Index | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids of all texts back to back, start of each text, its token count): equal token, equal id.

    Tokens are exactly what `str.split()` gives: trim, then split on whitespace (Arrow leaves an empty
    token for an empty text, counted as none). All-ASCII input takes Arrow's ASCII splitter (2x faster),
    unless it holds the separators \x1c-\x1f that Python also splits on.
    """
    trimmed = pc.utf8_trim_whitespace(_arrow_text(texts))
    data = trimmed.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    ascii_only = raw.max(initial=0) < 0x80 and not np.any((raw & 0xFC) == 0x1C)
    words = (pc.ascii_split_whitespace if ascii_only else pc.utf8_split_whitespace)(trimmed)
    offsets = words.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    lengths[pc.equal(pc.binary_length(trimmed), 0).to_numpy(zero_copy_only=False)] = 0
    flat = words.flatten()
    if len(flat) == 0:
        return np.zeros(0, np.int32), offsets[:-1], lengths
    ids = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return ids, offsets[:-1], lengths


def _arrow_text(texts: pd.Index | np.ndarray) -> pa.Array:
    """The texts as one Arrow string array; pandas' Arrow-backed strings are taken as they are (no copy)."""
    if isinstance(texts, pd.Index) and isinstance(texts.dtype, pd.StringDtype) and texts.dtype.storage == "pyarrow":
        arr = pa.array(texts.array)
    else:
        arr = pa.array(np.asarray(texts, dtype=object), type=pa.large_string())
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _rouge_pairs(
    ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, ra: np.ndarray, rb: np.ndarray
) -> np.ndarray:
    """ROUGE-L F1 of text pairs given as indices into the tokenized texts (each capped at MAX_LCS_TOKENS).

    LCS = common prefix + common suffix + LCS of the middles (annotators' responses to one prompt often
    share long runs); a middle whose shorter side has <= 64 tokens goes to the vectorized bit-parallel LCS,
    longer ones to `lcs_length`.
    """
    lengths = np.minimum(lengths, MAX_LCS_TOKENS)
    la, lb = lengths[ra], lengths[rb]
    lcs = np.where(ra == rb, la, 0)
    todo = np.flatnonzero((ra != rb) & (la > 0) & (lb > 0))
    sa, sb, na, nb = starts[ra[todo]], starts[rb[todo]], la[todo], lb[todo]
    head = _common_run(ids, sa, sb, np.minimum(na, nb), 1)
    tail = _common_run(ids, sa + na - 1, sb + nb - 1, np.minimum(na, nb) - head, -1)
    lcs[todo] = head + tail
    sa, sb, na, nb = sa + head, sb + head, na - head - tail, nb - head - tail
    rest = (na > 0) & (nb > 0)
    todo, sa, sb, na, nb = todo[rest], sa[rest], sb[rest], na[rest], nb[rest]
    swap = na > nb  # the shorter middle's tokens become bits
    s_start, s_len = np.where(swap, sb, sa), np.minimum(na, nb)
    t_start, t_len = np.where(swap, sa, sb), np.maximum(na, nb)
    fast = s_len <= _WORD
    lcs[todo[fast]] += _lcs_word(ids, s_start[fast], s_len[fast], t_start[fast], t_len[fast])
    for k in np.flatnonzero(~fast):
        seq_s = ids[s_start[k] : s_start[k] + s_len[k]].tolist()
        seq_t = ids[t_start[k] : t_start[k] + t_len[k]].tolist()
        lcs[todo[k]] += lcs_length(seq_s, seq_t)
    total = la + lb
    return np.where(total > 0, 2.0 * lcs / np.maximum(total, 1), 1.0)


def _common_run(ids: np.ndarray, a: np.ndarray, b: np.ndarray, limit: np.ndarray, step: int) -> np.ndarray:
    """How many tokens agree from positions a and b on (step 1) or back (step -1), at most `limit` per pair.

    Compares 8, then 16, 32, ... positions per round: a short run costs one round, a run of r tokens
    about log2(r) rounds.
    """
    itype = np.int32 if len(ids) < 2**31 - 1024 else np.int64  # narrower indices: less memory traffic
    a, b, limit = a.astype(itype), b.astype(itype), limit.astype(itype)
    run = np.zeros(len(a), itype)
    active = np.flatnonzero(limit > 0)
    block = 8
    while len(active):
        offset = run[active, None] + np.arange(block, dtype=itype)
        ia, ib = a[active, None] + step * offset, b[active, None] + step * offset
        same = np.take(ids, ia, mode="clip") == np.take(ids, ib, mode="clip")
        same &= offset < limit[active, None]
        lead = np.where(same.all(axis=1), block, same.argmin(axis=1))
        run[active] += lead.astype(itype)
        active = active[(lead == block) & (run[active] < limit[active])]
        block = min(block * 2, 256)
    return run.astype(np.int64)


def _lcs_word(
    ids: np.ndarray, s_start: np.ndarray, s_len: np.ndarray, t_start: np.ndarray, t_len: np.ndarray
) -> np.ndarray:
    """LCS lengths of token runs whose first run has 1..64 tokens: one uint64 bit-vector per pair, in lockstep.

    Pairs are sorted by length and cut into chunks; per chunk the match masks come from comparing every
    token of t with every token of s (packed into bits), then Hyyrö's update runs over t's positions.
    """
    out = np.zeros(len(s_len), np.int64)
    order = np.lexsort((s_len, t_len))
    start = 0
    while start < len(order):
        stop = min(start + 8192, len(order))
        steps = int(t_len[order[stop - 1]])
        stop = min(stop, start + max(1, _CHUNK_BYTES // (steps * _WORD)))
        c = order[start:stop]
        out[c] = _lcs_chunk(ids, s_start[c], s_len[c], t_start[c], t_len[c])
        start = stop
    return out


def _lcs_chunk(
    ids: np.ndarray, s_start: np.ndarray, s_len: np.ndarray, t_start: np.ndarray, t_len: np.ndarray
) -> np.ndarray:
    width = -(-int(s_len.max()) // 8) * 8
    a = _padded(ids, s_start, s_len, width, -1)
    b = _padded(ids, t_start, t_len, int(t_len.max()), -2)
    # width is a multiple of 8, so packing the flat cube packs each (pair, position) row on its own (5x faster)
    cube = b[:, :, None] == a[:, None, :]
    packed = np.packbits(cube.reshape(-1), bitorder="little").reshape(*cube.shape[:2], width // 8)
    if width < _WORD:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:2], (_WORD - width) // 8), np.uint8)], axis=2)
    masks = np.ascontiguousarray(packed.view("<u8")[:, :, 0].T)  # (position in t, pair)
    full = np.uint64(0xFFFF_FFFF_FFFF_FFFF) >> (_WORD - s_len).astype(np.uint64)
    v = full.copy()
    for row in masks:
        u = v & row
        v = ((v + u) | (v - u)) & full
    return s_len - np.bitwise_count(v).astype(np.int64)


def _padded(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int) -> np.ndarray:
    pos = np.arange(width)
    idx = np.minimum(starts[:, None] + pos, max(len(ids) - 1, 0))
    return np.where(pos < lengths[:, None], ids[idx], fill)


def response_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """ROUGE-L F1 for every pair of annotators who both wrote a response to a task.

    Columns: task_id, annotator_a, annotator_b, rouge_l.
    """
    return _response_pairs(_code(check_frame(frame)))


def _response_pairs(coded: _Coded) -> pd.DataFrame:
    text, uniques = pd.factorize(coded.frame["response"])
    rows = np.flatnonzero(text >= 0)
    i, j = _pairs_within(coded.task[rows])
    i, j = rows[i], rows[j]
    if len(i):
        ids, starts, lengths = _token_ids(uniques)
        score = _rouge_pairs(ids, starts, lengths, text[i].astype(np.int64), text[j].astype(np.int64))
    else:
        score = np.zeros(0)
    return pd.DataFrame(
        {
            "task_id": coded.task_ids[coded.task[i]],
            "annotator_a": coded.annotators[coded.annotator[i]],
            "annotator_b": coded.annotators[coded.annotator[j]],
            "rouge_l": score,
        }
    )


def _task_similarity(pairs: pd.DataFrame) -> pd.Series:
    """Mean pairwise ROUGE-L per task (tasks with two or more responses), indexed by task_id."""
    task, ids = pd.factorize(pairs["task_id"], sort=True)
    total = np.bincount(task, weights=pairs["rouge_l"].to_numpy(), minlength=len(ids))
    count = np.bincount(task, minlength=len(ids))
    return pd.Series(total / np.maximum(count, 1), index=pd.Index(ids, name="task_id"), name="rouge_l")
