"""Inter-annotator agreement (an Enterprise-only feature in Label Studio), for Community projects.

Owns the agreement figures of the validation report: on the category, Fleiss' kappa, Krippendorff's
alpha (nominal) and Light's kappa (mean pairwise Cohen's kappa), with percentile bootstrap intervals
over tasks; on the response, ROUGE-L F1 between annotators' texts; per-annotator figures (agreement
with the winning annotation, quarantine rate by check); and the list of tasks whose annotators
disagree. Everything is a pure function of one long frame, one row per (task_id, annotator), which
`annotations_frame` builds from raw Label Studio task JSON.

Choices made here (each one is tested):
- Fleiss' kappa with a varying number of raters per task uses the usual generalization: each task's
  agreement P_i uses its own rater count n_i, P-bar is their mean over tasks, and the category shares
  p_j pool all ratings. With a constant n it is exactly Fleiss (1971). Krippendorff's alpha is the
  figure made for missing data and varying raters; read it first.
- Only tasks with two or more category labels count (a single label cannot agree or disagree); a
  missing category next to a given one is missing data, not disagreement.
- When every label is the same category, expected agreement is 1 and kappa and alpha are 0/0: both
  are reported as NaN ("undefined"), not as the 1.0 some tools print, so a one-category project
  never looks perfectly reliable.
- Intervals (Fleiss, alpha): percentile bootstrap over tasks. Both figures depend on a task only
  through its label-count vector, so a resample is one multinomial draw over the distinct vectors:
  exact, and 1,000 resamples of 100k tasks take milliseconds. Light's kappa (mean pairwise Cohen's
  kappa over annotator pairs with >= min_pair_overlap shared tasks) is a point value.
- ROUGE-L F1 = 2 LCS / (len_a + len_b) on `str.split()` tokens, case-sensitive (two empty texts: 1.0);
  each text is cut to its first `MAX_LCS_TOKENS` tokens (longer texts are rare, LCS cost grows with
  the product of lengths). A task's response agreement is the mean over its annotator pairs, and it
  disagrees when that mean is below the threshold.

numpy/pandas only, plus pyarrow.compute for splitting words (as `near_duplicates` does).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ingest.labeling_config import CATEGORY_NAME, RESPONSE_NAME
from pipeline.ingest.records import AnnotationRule, _annotator, _list, _result_value, pick_annotation

__all__ = [
    "MAX_LCS_TOKENS",
    "AgreementReport",
    "Estimate",
    "agreement_report",
    "annotations_frame",
    "annotator_stats",
    "bootstrap_agreement",
    "category_table",
    "check_frame",
    "cohen_kappa",
    "coincidence_matrix",
    "disagreements",
    "fleiss_kappa",
    "krippendorff_alpha",
    "lcs_length",
    "pairwise_cohen",
    "quarantine_by_check",
    "response_pairs",
    "rouge_l_f1",
    "rouge_l_f1_batch",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("task_id", "annotator", "category", "response")
# Tokens of a text that ROUGE-L looks at; beyond this the similarity is that of the first tokens.
MAX_LCS_TOKENS = 2048
# A multi-choice answer becomes one nominal value: its choices, sorted, joined by this.
MULTI_CHOICE_SEP = "|"
_PREFIX = "data/agreement/"
_WORD = 64  # pairs whose shorter text has at most this many tokens take the vectorized LCS
_CHUNK_BYTES = 1 << 24  # memory for one chunk's token-comparison cube
_MARKDOWN_ROWS = 20
_ANNOTATOR_HEADERS = {
    "winner_agreement": "category = winner's",
    "response_rouge_l": "response ROUGE-L with peers",
    "quarantine_rate": "quarantined",
}


# --------------------------------------------------------------------------------------------- frame


def annotations_frame(
    tasks: Iterable[dict[str, Any]],
    *,
    category_name: str = CATEGORY_NAME,
    response_name: str = RESPONSE_NAME,
    rule: AnnotationRule = "latest",
) -> pd.DataFrame:
    """One row per (task, annotator) from raw Label Studio tasks; skipped (cancelled) annotations are left out.

    Columns: task_id, annotator, annotation_id, category, response, winner. `winner` marks the annotation
    `pick_annotation` keeps for training (same rule as ingest). An annotator with several submitted
    annotations on one task counts once: the winning one if it is theirs, else the one the rule prefers.
    """
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for task in tasks:
        task_id = task.get("id") if isinstance(task, dict) else None
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise ValueError(f"task {task_id!r}: a task needs an integer 'id'")
        if task_id in seen:
            raise ValueError(f"task {task_id}: appears more than once")
        seen.add(task_id)
        winner, _ = pick_annotation(task, rule)
        by_annotator: dict[str, list[dict[str, Any]]] = {}
        for ann in _list(task.get("annotations")):
            if isinstance(ann, dict) and ann.get("was_cancelled") is not True:
                who = _annotator(ann)
                if not who:
                    raise ValueError(f"task {task_id}: annotation {ann.get('id')!r} has no completed_by annotator")
                by_annotator.setdefault(who, []).append(ann)
        for who, anns in by_annotator.items():
            ann = winner if any(a is winner for a in anns) else pick_annotation({"annotations": anns}, "latest")[0]
            assert ann is not None  # anns is a non-empty list of submitted annotations
            rows.append(_annotation_row(task_id, who, ann, ann is winner, category_name, response_name))
    columns = ["task_id", "annotator", "annotation_id", "category", "response", "winner"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["task_id"] = frame["task_id"].astype(np.int64)
    frame["annotation_id"] = frame["annotation_id"].astype("Int64")
    frame["winner"] = frame["winner"].astype(bool)
    for col in ("annotator", "category", "response"):
        frame[col] = frame[col].astype(object)
    return frame


def _annotation_row(
    task_id: int, who: str, ann: dict[str, Any], won: bool, category_name: str, response_name: str
) -> dict[str, Any]:
    choices = _result_value(ann, category_name, "choices")
    texts = _result_value(ann, response_name, "text")
    ann_id = ann.get("id")
    return {
        "task_id": task_id,
        "annotator": who,
        "annotation_id": ann_id if isinstance(ann_id, int) and not isinstance(ann_id, bool) else None,
        "category": MULTI_CHOICE_SEP.join(sorted(str(c) for c in choices)) if choices else None,
        "response": "\n".join(str(t) for t in texts) if texts is not None else None,
        "winner": won,
    }


def check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame, checked (a new frame; the input is not changed); errors name the task, annotator and field.

    task_id must be an integer, annotator a non-empty name (numbers become text), (task_id, annotator)
    unique, category and response text or missing, winner and quarantined True/False, one winner per task.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"annotation frame lacks column(s) {missing}; it has {list(frame.columns)}")
    out = frame.reset_index(drop=True)
    out["task_id"] = _task_id_column(out)
    out["annotator"] = _annotator_column(out)
    dup = out.duplicated(["task_id", "annotator"], keep=False)
    if dup.any():
        i = _first(dup)
        t, a = out.at[i, "task_id"], out.at[i, "annotator"]
        n = int(((out["task_id"] == t) & (out["annotator"] == a)).sum())
        raise ValueError(f"task {t}: annotator {a!r} has {n} rows; keep one per (task_id, annotator)")
    for col in ("category", "response"):
        _check_text(out, col)
    if "winner" in out.columns:
        out["winner"] = _bool_column(out, "winner")
        many = out.groupby("task_id")["winner"].sum()
        if (many > 1).any():
            t = int(many.index[many.to_numpy() > 1][0])
            names = sorted(out.loc[(out["task_id"] == t) & out["winner"], "annotator"])
            raise ValueError(f"task {t}: {len(names)} annotations are marked winner ({', '.join(names)}); at most one")
    if "quarantined" in out.columns:
        out["quarantined"] = _bool_column(out, "quarantined")
    return out


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages read 3.0, not np.float64(3.0)."""
    return value.item() if isinstance(value, np.generic) else value


def _first(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy(dtype=bool))[0])


def _task_id_column(frame: pd.DataFrame) -> pd.Series:
    task = frame["task_id"]
    if not len(task) or (pd.api.types.is_integer_dtype(task.dtype) and not task.isna().any()):
        return task.astype(np.int64)
    if task.dtype == object and pd.api.types.infer_dtype(task, skipna=False) == "integer":
        return task.astype(np.int64)
    i = _first(~task.map(lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)))
    raise ValueError(f"row {i}: task_id {_plain(task.iat[i])!r} is not an integer")


def _annotator_column(frame: pd.DataFrame) -> pd.Series:
    who = frame["annotator"]
    if who.isna().any():
        raise ValueError(f"task {frame.at[_first(who.isna()), 'task_id']}: a row has no annotator")
    if pd.api.types.infer_dtype(who, skipna=False) != "string":
        who = who.map(str).astype(object)  # ids as numbers name annotators too
    empty = who.eq("")
    if empty.any():
        raise ValueError(f"task {frame.at[_first(empty), 'task_id']}: a row has an empty annotator name")
    return who


def _check_text(frame: pd.DataFrame, col: str) -> None:
    """A non-text value (missing is fine) is an error naming its task, annotator and column."""
    values = frame[col]
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return
    i = _first(~(values.map(lambda v: isinstance(v, str)) | values.isna()))
    raise ValueError(
        f"task {frame.at[i, 'task_id']}, annotator {frame.at[i, 'annotator']!r}: {col} is "
        f"{type(_plain(values.iat[i])).__name__} {_plain(values.iat[i])!r}, not text"
    )


def _bool_column(frame: pd.DataFrame, col: str) -> pd.Series:
    values = frame[col]
    if values.dtype == bool:
        return values
    ok = values.map(lambda v: v is None or isinstance(v, bool | np.bool_) or (isinstance(v, float) and math.isnan(v)))
    if not ok.all():
        i = _first(~ok)
        raise ValueError(
            f"task {frame.at[i, 'task_id']}, annotator {frame.at[i, 'annotator']!r}: {col} is "
            f"{_plain(values.iat[i])!r}, not True/False"
        )
    return values.astype(object).where(values.notna(), False).astype(bool)


@dataclass(frozen=True, eq=False)
class _Coded:
    """The checked frame with dense integer codes for task, annotator and category (-1 = no category)."""

    frame: pd.DataFrame
    task: np.ndarray
    task_ids: np.ndarray
    annotator: np.ndarray
    annotators: np.ndarray
    category: np.ndarray
    categories: np.ndarray

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)


def _code(frame: pd.DataFrame) -> _Coded:
    task, task_ids = pd.factorize(frame["task_id"], sort=True)
    annotator, annotators = pd.factorize(frame["annotator"], sort=True)
    category, categories = pd.factorize(frame["category"], sort=True)
    return _Coded(
        frame,
        task.astype(np.int64),
        np.asarray(task_ids, dtype=np.int64),
        annotator.astype(np.int64),
        np.asarray(annotators, dtype=object),
        category.astype(np.int64),
        np.asarray(categories, dtype=object),
    )


def _pairs_within(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index pairs (i, j) with the same group code, every unordered pair once; O(rows + pairs)."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    end = np.repeat(starts + sizes, sizes)
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    cand, d = np.arange(n), 1
    while len(cand):
        cand = cand[cand + d < end[cand]]
        left.append(order[cand])
        right.append(order[cand + d])
        d += 1
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64)


# ------------------------------------------------------------------------------------------ category


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


# ------------------------------------------------------------------------------------------ response


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


# ---------------------------------------------------------------------------------------- annotators


def annotator_stats(frame: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per annotator: tasks, shared tasks, agreement with the winner, mean ROUGE-L with peers, quarantine rate.

    winner_agreement is the share of their category labels equal to the winner's, on tasks where both
    have a category and they are not the winner (NaN without a `winner` column or such a task). The
    quarantine columns appear when the frame has `quarantined` or `failed_check`.
    """
    coded = _code(check_frame(frame))
    return _annotator_stats(coded, _response_pairs(coded) if pairs is None else pairs)


def _annotator_stats(coded: _Coded, pairs: pd.DataFrame) -> pd.DataFrame:
    f, n_ann = coded.frame, len(coded.annotators)
    per_task = np.bincount(coded.task, minlength=coded.n_tasks)
    out = pd.DataFrame(
        {
            "annotator": coded.annotators,
            "tasks": np.bincount(coded.annotator, minlength=n_ann),
            "shared_tasks": np.bincount(coded.annotator, weights=per_task[coded.task] >= 2, minlength=n_ann),
        }
    )
    out["shared_tasks"] = out["shared_tasks"].astype(np.int64)
    if "winner" in f.columns:
        won = f["winner"].to_numpy(dtype=bool)
        winner_cat = np.full(coded.n_tasks, -1, np.int64)
        winner_cat[coded.task[won]] = coded.category[won]
        theirs = winner_cat[coded.task]
        compared = ~won & (theirs >= 0) & (coded.category >= 0)
        n_cmp = np.bincount(coded.annotator, weights=compared, minlength=n_ann)
        n_agree = np.bincount(coded.annotator, weights=compared & (coded.category == theirs), minlength=n_ann)
        out["wins"] = np.bincount(coded.annotator, weights=won, minlength=n_ann).astype(np.int64)
        out["winner_compared"] = n_cmp.astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["winner_agreement"] = np.where(n_cmp > 0, n_agree / n_cmp, np.nan)
    both = pd.concat(
        [pairs[["annotator_a", "rouge_l"]].set_axis(["annotator", "rouge_l"], axis=1),
         pairs[["annotator_b", "rouge_l"]].set_axis(["annotator", "rouge_l"], axis=1)]
    )  # fmt: skip
    out["response_rouge_l"] = out["annotator"].map(both.groupby("annotator")["rouge_l"].mean()).astype(float)
    quarantined = _quarantined(f)
    if quarantined is not None:
        n_q = np.bincount(coded.annotator, weights=quarantined, minlength=n_ann)
        out["quarantined"] = n_q.astype(np.int64)
        out["quarantine_rate"] = n_q / np.maximum(out["tasks"].to_numpy(), 1)
        out["acceptance_rate"] = 1.0 - out["quarantine_rate"]
    return out


def _quarantined(frame: pd.DataFrame) -> np.ndarray | None:
    if "quarantined" in frame.columns:
        return frame["quarantined"].to_numpy(dtype=bool)
    if "failed_check" in frame.columns:
        return frame["failed_check"].notna().to_numpy()
    return None


def quarantine_by_check(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Per (annotator, failed check): rows and their share of the annotator's rows; None without those columns."""
    return _quarantine_by_check(check_frame(frame))


def _quarantine_by_check(f: pd.DataFrame) -> pd.DataFrame | None:
    quarantined = _quarantined(f)
    if quarantined is None:
        return None
    check = f["failed_check"] if "failed_check" in f.columns else pd.Series(None, index=f.index, dtype=object)
    hit = pd.DataFrame(
        {"annotator": f["annotator"].to_numpy()[quarantined], "check": check.to_numpy(dtype=object)[quarantined]}
    )
    hit["check"] = hit["check"].where(hit["check"].notna(), "(unnamed)").astype(str)
    counts = hit.groupby(["annotator", "check"]).size().rename("rows").reset_index()
    totals = f.groupby("annotator").size()
    counts["rate"] = counts["rows"] / counts["annotator"].map(totals).to_numpy()
    return counts.sort_values(["annotator", "rows", "check"], ascending=[True, False, True], ignore_index=True)


# ------------------------------------------------------------------------------------- disagreements


def disagreements(
    frame: pd.DataFrame, *, response_threshold: float = 0.5, similarity: pd.Series | None = None
) -> pd.DataFrame:
    """Tasks whose annotators disagree: categories differ, or mean pairwise ROUGE-L < response_threshold.

    Columns: task_id (sorted), category_differs, response_rouge_l (NaN when < 2 responses), reason.
    A missing category next to a given one is missing data, not disagreement. `similarity` (per-task mean
    ROUGE-L indexed by task_id) saves recomputing it.
    """
    coded = _code(check_frame(frame))
    if similarity is None:
        similarity = _task_similarity(_response_pairs(coded))
    return _disagreements(coded, similarity, response_threshold)


def _disagreements(coded: _Coded, similarity: pd.Series, threshold: float) -> pd.DataFrame:
    differs = (
        ((_category_counts(coded) > 0).sum(axis=1) > 1) if len(coded.categories) else np.zeros(coded.n_tasks, bool)
    )
    score = similarity.reindex(coded.task_ids).to_numpy(dtype=np.float64)
    low = score < threshold
    flagged = np.flatnonzero(differs | low)
    labels = _labels_by_task(coded, flagged[differs[flagged]])
    reasons = []
    for t in flagged:
        parts = [f"categories differ ({labels[t]})"] if differs[t] else []
        if low[t]:
            parts.append(f"response ROUGE-L {score[t]:.2f} < {threshold:.2f}")
        reasons.append("; ".join(parts))
    return pd.DataFrame(
        {
            "task_id": coded.task_ids[flagged],
            "category_differs": differs[flagged],
            "response_rouge_l": score[flagged],
            "reason": pd.Series(reasons, dtype=object),
        }
    )


def _labels_by_task(coded: _Coded, tasks: np.ndarray) -> dict[int, str]:
    """'annotator=category, ...' (sorted by annotator) for the given task codes, joined without a Python loop."""
    rows = np.flatnonzero(np.isin(coded.task, tasks) & (coded.category >= 0))
    rows = rows[np.lexsort((coded.annotator[rows], coded.task[rows]))]
    if not len(rows):
        return {}
    task = coded.task[rows]
    first = np.r_[True, task[1:] != task[:-1]]
    sep = np.where(first, "", ", ").astype(object)
    pieces = sep + coded.annotators[coded.annotator[rows]] + "=" + coded.categories[coded.category[rows]]
    joined = np.add.reduceat(pieces, np.flatnonzero(first))
    return dict(zip(task[first].tolist(), joined.tolist(), strict=True))


# ------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, eq=False)
class AgreementReport:
    """Everything `agreement_report` measured; `metrics()` for MLflow, `markdown()` for the validation report."""

    tasks: int
    annotations: int
    annotators: int
    tasks_multi_annotated: int
    category_tasks: int
    fleiss_kappa: Estimate
    krippendorff_alpha: Estimate
    cohen_kappa_mean: float
    cohen_pairs: pd.DataFrame
    response_tasks: int
    response_similarity: pd.Series  # mean pairwise ROUGE-L F1 per task
    annotator_stats: pd.DataFrame
    quarantine_by_check: pd.DataFrame | None
    disagreements: pd.DataFrame
    n_boot: int
    seed: int
    ci: float
    response_threshold: float
    min_pair_overlap: int

    def response_quantiles(self) -> dict[str, float]:
        """p10, p25, p50, p75 and p90 of the per-task response similarity (NaN without such tasks)."""
        s = self.response_similarity.to_numpy(dtype=np.float64)
        qs = {"p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9}
        return {k: float(np.quantile(s, q)) if len(s) else math.nan for k, q in qs.items()}

    def metrics(self) -> dict[str, float]:
        """Flat metrics, all plain floats, under data/agreement/."""
        s = self.response_similarity.to_numpy(dtype=np.float64)
        out: dict[str, float] = {
            "tasks": self.tasks,
            "annotations": self.annotations,
            "annotators": self.annotators,
            "tasks_multi_annotated": self.tasks_multi_annotated,
            "category_tasks": self.category_tasks,
        }
        for name, est in (("fleiss_kappa", self.fleiss_kappa), ("krippendorff_alpha", self.krippendorff_alpha)):
            out[f"category_{name}"] = est.value
            out[f"category_{name}_ci_low"] = est.ci_low
            out[f"category_{name}_ci_high"] = est.ci_high
        out["category_cohen_kappa_mean"] = self.cohen_kappa_mean
        out["category_cohen_pairs"] = len(self.cohen_pairs)
        out["response_tasks"] = self.response_tasks
        out["response_rouge_l_mean"] = float(s.mean()) if len(s) else math.nan
        for k, v in self.response_quantiles().items():
            out[f"response_rouge_l_{k}"] = v
        out["response_below_threshold_share"] = float((s < self.response_threshold).mean()) if len(s) else math.nan
        out["disagreement_tasks"] = len(self.disagreements)
        return {_PREFIX + k: float(v) for k, v in out.items()}

    def markdown(self, title: str = "Inter-annotator agreement") -> str:
        """A section for the validation report: figures with intervals, annotators, disagreeing tasks."""
        m = {k.removeprefix(_PREFIX): v for k, v in self.metrics().items()}
        level = f"{self.ci:.0%}"
        lines = [
            f"## {title}",
            "",
            f"{self.tasks:,} tasks, {self.annotations:,} annotations by {self.annotators:,} annotators; "
            f"{self.tasks_multi_annotated:,} tasks have two or more annotators ({self.category_tasks:,} with two "
            f"or more categories, {self.response_tasks:,} with two or more responses).",
            "",
        ]
        if self.tasks_multi_annotated == 0:
            return "\n".join([*lines, "No task has two or more annotators: agreement cannot be measured.", ""])
        lines += [
            f"| figure | value | {level} interval |",
            "|---|---|---|",
            f"| Krippendorff's alpha (category, nominal) | {_num(self.krippendorff_alpha.value)} | "
            f"{_interval(self.krippendorff_alpha)} |",
            f"| Fleiss' kappa (category) | {_num(self.fleiss_kappa.value)} | {_interval(self.fleiss_kappa)} |",
            f"| Light's kappa (mean Cohen's kappa over {len(self.cohen_pairs):,} annotator pairs with "
            f">= {self.min_pair_overlap} shared tasks) | {_num(self.cohen_kappa_mean)} | |",
            f"| Response ROUGE-L F1, mean over tasks | {_num(m['response_rouge_l_mean'])} | |",
            f"| Response ROUGE-L F1, p10 / median / p90 | {_num(m['response_rouge_l_p10'])} / "
            f"{_num(m['response_rouge_l_p50'])} / {_num(m['response_rouge_l_p90'])} | |",
            f"| Tasks with response ROUGE-L < {self.response_threshold:.2f} | {_share(m['response_below_threshold_share'])} | |",
            f"| Tasks in disagreement | {len(self.disagreements):,} | |",
            "",
            f"Intervals: percentile bootstrap over tasks, {self.n_boot:,} resamples, seed {self.seed}. "
            "Undefined figures (n/a) mean too few labels or a single category throughout.",
            "",
        ]
        lines += self._annotator_lines() + self._disagreement_lines()
        return "\n".join(lines)

    def _annotator_lines(self) -> list[str]:
        a = self.annotator_stats.sort_values(["tasks", "annotator"], ascending=[False, True])
        cols = [c for c in _ANNOTATOR_HEADERS if c in a.columns and a[c].notna().any()]
        head = ["annotator", "tasks", "shared tasks", *(_ANNOTATOR_HEADERS[c] for c in cols)]
        lines = ["### Annotators", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in a.head(_MARKDOWN_ROWS * 5).itertuples(index=False):
            vals = [_cell(r.annotator), f"{int(r.tasks):,}", f"{int(r.shared_tasks):,}"]
            vals += [_share(getattr(r, c)) if c == "quarantine_rate" else _num(getattr(r, c)) for c in cols]
            lines.append("| " + " | ".join(vals) + " |")
        if len(a) > _MARKDOWN_ROWS * 5:
            lines.append(f"\n{len(a) - _MARKDOWN_ROWS * 5:,} more annotators are in the agreement data.")
        lines.append("")
        q = self.quarantine_by_check
        if q is not None and len(q):
            lines += [
                "### Quarantine by check",
                "",
                "| annotator | check | rows | share of their rows |",
                "|---|---|---|---|",
            ]
            for r in q.head(_MARKDOWN_ROWS * 5).itertuples(index=False):
                lines.append(f"| {_cell(r.annotator)} | {_cell(r.check)} | {int(r.rows):,} | {_share(r.rate)} |")
            lines.append("")
        return lines

    def _disagreement_lines(self) -> list[str]:
        d = self.disagreements
        if not len(d):
            return ["No task's annotators disagree.", ""]
        lines = [f"### Disagreements ({len(d):,} tasks; first {min(len(d), _MARKDOWN_ROWS)})", "", "| task | reason |"]
        lines.append("|---|---|")
        for r in d.head(_MARKDOWN_ROWS).itertuples(index=False):
            lines.append(f"| {int(r.task_id)} | {_cell(r.reason)} |")
        return [*lines, ""]


def _num(value: object) -> str:
    x = float(value)  # type: ignore[arg-type]
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _share(value: object) -> str:
    x = float(value)  # type: ignore[arg-type]
    return "n/a" if math.isnan(x) else f"{x:.1%}"


def _interval(est: Estimate) -> str:
    return "n/a" if math.isnan(est.ci_low) else f"[{est.ci_low:.3f}, {est.ci_high:.3f}]"


def _cell(value: object) -> str:
    # Annotator names and labels are data, not markup (same escaping as report.py).
    text = str(value)
    for ch in ("\\", "|", "<", ">", "`", "*", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def agreement_report(
    frame: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    response_threshold: float = 0.5,
    ci: float = 0.95,
    min_pair_overlap: int = 10,
) -> AgreementReport:
    """All agreement figures of a long annotation frame (see `check_frame` for its columns)."""
    coded = _code(check_frame(frame))
    table = _category_table(coded)
    estimates = bootstrap_agreement(table, n_boot=n_boot, seed=seed, ci=ci)
    cohen = _pairwise_cohen(coded, min_pair_overlap)
    pairs = _response_pairs(coded)
    similarity = _task_similarity(pairs)
    kappas = cohen["kappa"].to_numpy(dtype=np.float64)
    return AgreementReport(
        tasks=coded.n_tasks,
        annotations=len(coded.frame),
        annotators=len(coded.annotators),
        tasks_multi_annotated=int((np.bincount(coded.task, minlength=coded.n_tasks) >= 2).sum()),
        category_tasks=int((table.to_numpy().sum(axis=1) >= 2).sum()),
        fleiss_kappa=estimates["fleiss_kappa"],
        krippendorff_alpha=estimates["krippendorff_alpha"],
        cohen_kappa_mean=float(np.nanmean(kappas)) if np.isfinite(kappas).any() else math.nan,
        cohen_pairs=cohen,
        response_tasks=len(similarity),
        response_similarity=similarity,
        annotator_stats=_annotator_stats(coded, pairs),
        quarantine_by_check=_quarantine_by_check(coded.frame),
        disagreements=_disagreements(coded, similarity, response_threshold),
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        response_threshold=response_threshold,
        min_pair_overlap=min_pair_overlap,
    )
