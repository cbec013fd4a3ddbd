"""The long annotation frame every agreement figure reads: one row per (task_id, annotator).

`annotations_frame` builds it from raw Label Studio tasks (the winner by the ingest rule), `check_frame`
checks a frame given by hand, and `_code` turns it into dense integer codes for the vectorized figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.ingest.labeling_config import CATEGORY_NAME, RESPONSE_NAME
from pipeline.ingest.overlap import MULTI_CHOICE_SEP, annotation_frame, annotation_rows
from pipeline.ingest.records import AnnotationRule, _annotator, _list

__all__ = ["MULTI_CHOICE_SEP", "REQUIRED_COLUMNS", "annotations_frame", "check_frame"]

REQUIRED_COLUMNS: tuple[str, ...] = ("task_id", "annotator", "category", "response")


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
    task_ids: list[int] = []
    rows: list[list[Any]] = []
    seen: set[int] = set()
    for task in tasks:
        task_id = task.get("id") if isinstance(task, dict) else None
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise ValueError(f"task {task_id!r}: a task needs an integer 'id'")
        if task_id in seen:
            raise ValueError(f"task {task_id}: appears more than once")
        seen.add(task_id)
        for ann in _list(task.get("annotations")):
            if isinstance(ann, dict) and ann.get("was_cancelled") is not True and not _annotator(ann):
                raise ValueError(f"task {task_id}: annotation {ann.get('id')!r} has no completed_by annotator")
        found = annotation_rows(task, rule, category_name=category_name, response_name=response_name)
        task_ids += [task_id] * len(found)
        rows += found
    return annotation_frame(task_ids, rows)


def check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame, checked (a new frame; the input is not changed); errors name the task, annotator and field.

    task_id must be an integer, annotator a non-empty name (numbers become text), (task_id, annotator)
    unique, category and response text or missing, winner, quarantined and accepted True/False, one winner per task.
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
    for col in ("quarantined", "accepted"):
        if col in out.columns:
            out[col] = _bool_column(out, col)
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
