"""Label Studio tasks (API or JSON export) -> PairRecords, with every task accounted for.

Which annotation wins per task (the stated rule, DESIGN.md): cancelled (skipped) annotations
never count; among submitted ones a ground-truth annotation wins, else the most recently
updated one (ties broken by the higher annotation id). With the `majority` rule the category
most submitted annotations chose wins (its latest annotation supplies the response) and a tie
is quarantined for adjudication. Drafts live outside `annotations` and never reach training.

Every field read is first checked for the JSON type Label Studio writes (pipeline/ingest/task_checks.py):
a malformed flag, id, timestamp or result quarantines the task with a reason, never a lenient reading.
Task data is only ever treated as text: nothing here renders it or follows it as a URL.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipeline.ingest.labeling_config import CATEGORY_NAME, PROMPT_NAME, RESPONSE_NAME
from pipeline.ingest.task_checks import (
    CHECK_HINTS,
    EARLIEST,
    ID_MAX,
    data_problem,
    parse_instant,
    preview,
    task_problem,
    utc_text,
    valid_id,
)

PAIR_COLUMNS: tuple[str, ...] = (
    "task_id",
    "annotation_id",
    "project_id",
    "prompt",
    "response",
    "category",
    "annotator",
    "updated_at",
    "ground_truth",
    "system",
    "context",
)
# One row per task or annotation that did not become a training row, whatever the stage.
QUARANTINE_COLUMNS: tuple[str, ...] = ("task_id", "annotation_id", "stage", "check", "reason", "value")
UNUSABLE_COLUMNS: tuple[str, ...] = ("task_id", "reason")

# Longer texts are not training pairs but pasted documents or runaway input; quarantined.
MAX_TEXT_CHARS = 100_000
AnnotationRule = Literal["latest", "majority"]
# C0 controls other than tab/newline/carriage return, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MAJORITY_TIE = "category_majority_tie"
# How annotators fix what normalization catches beyond the schema's checks (schemas/pairs.py FIX_HINTS).
NORMALIZE_HINTS: dict[str, str] = {
    MAJORITY_TIE: "annotators disagree on the category with no majority; add a ground-truth annotation",
    "text_too_long": f"shorten the text to under {MAX_TEXT_CHARS:,} characters",
    "valid_unicode": "the text holds invalid Unicode (lone surrogates); re-import or retype it",
    "no_control_characters": "remove control characters (other than tab and newline) from the text",
    **CHECK_HINTS,
}


@dataclass(frozen=True)
class NormalizedTasks:
    """The result of normalizing one pull: records, quarantined tasks and unusable tasks."""

    records: pd.DataFrame  # PAIR_COLUMNS
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS, stage == "normalize"
    unusable: pd.DataFrame  # UNUSABLE_COLUMNS
    tasks_seen: int


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def pick_annotation(task: dict[str, Any], rule: AnnotationRule = "latest") -> tuple[dict[str, Any] | None, str | None]:
    """The winning annotation of a task, or (None, reason): an unusable reason, or MAJORITY_TIE."""
    annotations = [a for a in _list(task.get("annotations")) if isinstance(a, dict)]
    submitted = [a for a in annotations if a.get("was_cancelled") is not True]
    if not submitted:
        if annotations:
            return None, "only_skipped"
        if task.get("drafts"):
            return None, "only_drafts"
        return None, "no_annotation"
    pool = [a for a in submitted if a.get("ground_truth") is True] or submitted
    if rule == "majority" and pool is submitted and len(submitted) > 1:
        votes = Counter(_category_vote(a) for a in submitted)
        ranked = votes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            return None, MAJORITY_TIE
        pool = [a for a in submitted if _category_vote(a) == ranked[0][0]]
    winner = max(pool, key=lambda a: (_instant(a.get("updated_at")), a.get("id") or 0))  # ids checked: int
    return winner, None


def _category_vote(annotation: dict[str, Any]) -> str | None:
    choices = _result_value(annotation, CATEGORY_NAME, "choices")
    if not choices:
        return None
    # repr: any value votes, hashable; nested junk is previewed (bounded), never recursed into.
    return repr(choices) if all(isinstance(c, str) for c in choices) else preview(choices)


def _instant(value: object) -> datetime:
    """A (checked) timestamp as an aware UTC datetime, compared as an instant, not a string; missing sorts first."""
    return (parse_instant(value) if isinstance(value, str) else None) or EARLIEST


def _result_value(annotation: dict[str, Any], from_name: str, key: str) -> list[Any] | None:
    for item in _list(annotation.get("result")):
        if isinstance(item, dict) and item.get("from_name") == from_name:
            value = item.get("value") or {}
            got = value.get(key) if isinstance(value, dict) else None
            return got if isinstance(got, list) else None
    return None


def _annotator(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # exports may expand the user (checked: an email or a valid id)
        who = who.get("email") or who.get("id")
    return "" if who is None else str(who)


def _int_or_none(value: object) -> int | None:
    return value if valid_id(value) else None  # type: ignore[return-value]


def _text_problem(text: str) -> tuple[str, str] | None:
    """(check, reason) when a text cannot be stored or trained on as is."""
    if len(text) > MAX_TEXT_CHARS:
        return "text_too_long", f"{len(text):,} characters (limit {MAX_TEXT_CHARS:,})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "valid_unicode", "holds lone UTF-16 surrogates, not valid Unicode"
    if _CONTROL.search(text):
        return "no_control_characters", "holds control characters"
    return None


def _safe_text(value: object) -> str:
    """A string that can be stored (parquet needs valid UTF-8): lone surrogates become U+FFFD."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


OutcomeKind = Literal["record", "quarantined", "unusable"]


@dataclass(frozen=True)
class TaskOutcome:
    """Where one task ends: a training `record` (PAIR_COLUMNS row), `quarantined` or `unusable` (their columns).

    A pure function of the task (normalize_task), so an incremental pull reuses the outcomes of unchanged
    tasks from the previous pull instead of normalizing them again.
    """

    kind: OutcomeKind
    row: dict[str, Any]


def _rejected(task_id: int | None, ann_id: int | None, check: str, reason: str, value: object) -> TaskOutcome:
    """A quarantined outcome (the value previewed: bounded whatever its size or depth)."""
    row = {
        "task_id": task_id,
        "annotation_id": ann_id,
        "stage": "normalize",
        "check": check,
        "reason": reason,
        "value": preview(value),
    }
    return TaskOutcome("quarantined", row)


def normalize_task(
    task: dict[str, Any], *, project_id: int | None = None, rule: AnnotationRule = "latest"
) -> TaskOutcome:
    """The outcome of one task whose `id` is valid (normalize_tasks checks ids across tasks)."""
    task_id = task["id"]
    problem = task_problem(task, task_id)
    if problem is not None:
        return _rejected(task_id, problem.annotation_id, problem.check, problem.reason, problem.value)
    annotation, why = pick_annotation(task, rule)
    if why == MAJORITY_TIE:
        votes = sorted(str(_category_vote(a)) for a in _list(task.get("annotations")) if isinstance(a, dict))
        return _rejected(task_id, None, MAJORITY_TIE, "annotators' categories tie with no majority", votes)
    if annotation is None:
        return TaskOutcome("unusable", {"task_id": task_id, "reason": why})
    ann_id = _int_or_none(annotation.get("id"))
    problem = data_problem(task.get("data"), task_id, ann_id)
    if problem is not None:
        return _rejected(task_id, ann_id, problem.check, problem.reason, problem.value)
    data = task.get("data") or {}
    prompt = data.get(PROMPT_NAME)
    if not isinstance(prompt, str):
        return _rejected(task_id, ann_id, "prompt_is_text", f"data.{PROMPT_NAME} is missing or not a string", prompt)
    texts = _result_value(annotation, RESPONSE_NAME, "text")
    if texts is None:
        names = sorted({_safe_text(i.get("from_name")) for i in _list(annotation.get("result")) if isinstance(i, dict)})
        if not names:
            return TaskOutcome("unusable", {"task_id": task_id, "reason": "empty_response"})
        return _rejected(
            task_id,
            ann_id,
            "result_matches_config",
            f"annotation has no {RESPONSE_NAME!r} TextArea result (found {names}); "
            "was it made with another labeling config?",
            names,
        )
    if not all(isinstance(t, str) for t in texts):
        return _rejected(task_id, ann_id, "response_is_text", "response text is not a string", texts)
    choices = _result_value(annotation, CATEGORY_NAME, "choices")
    if choices is not None and len(choices) > 1:
        return _rejected(task_id, ann_id, "single_category", "more than one category chosen", choices)
    category = choices[0] if choices else None
    if category is not None and not isinstance(category, str):
        return _rejected(task_id, ann_id, "category_is_text", "category is not a string", category)
    # TextArea keeps one text per submission; several are joined line by line.
    response = "\n".join(texts)
    system, context = data.get("system"), data.get("context")  # checked: strings or None
    fields = {"prompt": prompt, "response": response, "category": category, "system": system, "context": context}
    for name, value in fields.items():
        problem = _text_problem(value) if value is not None else None
        if problem is not None:
            check, why_text = problem
            return _rejected(task_id, ann_id, check, f"{name}: {why_text}", value)
    updated = annotation.get("updated_at") or annotation.get("created_at")
    row = {
        "task_id": task_id,
        "annotation_id": ann_id,
        "project_id": _int_or_none(task.get("project")) or project_id or 0,
        "prompt": prompt,
        "response": response,
        "category": category,
        "annotator": _safe_text(_annotator(annotation)),
        "updated_at": utc_text(updated),
        "ground_truth": annotation.get("ground_truth") is True,
        "system": system,
        "context": context,
    }
    return TaskOutcome("record", row)


_COLUMNS: dict[OutcomeKind, tuple[str, ...]] = {
    "record": PAIR_COLUMNS,
    "quarantined": QUARANTINE_COLUMNS,
    "unusable": UNUSABLE_COLUMNS,
}


@dataclass
class OutcomeCollector:
    """Collects task outcomes in arrival order and checks task ids across tasks (invalid, duplicated).

    Outcomes are kept column by column (one list per column, no dict per row): a pull of N tasks holds
    N pointers per column on top of the values themselves, which the result frames keep anyway.
    """

    columns: dict[OutcomeKind, dict[str, list[Any]]] = field(
        default_factory=lambda: {kind: {c: [] for c in cols} for kind, cols in _COLUMNS.items()}
    )
    seen_ids: set[int] = field(default_factory=set)
    tasks_seen: int = 0

    def check_id(self, task: object) -> int | None:
        """The task's id if it is a new integer id; otherwise the task is quarantined here and None returned."""
        raw_id = task.get("id") if isinstance(task, dict) else None
        if not valid_id(raw_id):
            what = "is not an object" if not isinstance(task, dict) else f"has id {preview(raw_id)}"
            why = f"task #{self.tasks_seen + 1} of the source {what}; a task needs an integer id in 1..{ID_MAX}"
            self.add(_rejected(None, None, "task_id_invalid", why, task if not isinstance(task, dict) else raw_id))
            return None
        if raw_id in self.seen_ids:
            self.add(_rejected(raw_id, None, "task_id_duplicate", f"task id {raw_id} appears more than once", raw_id))
            return None
        self.seen_ids.add(raw_id)
        return raw_id

    def add(self, outcome: TaskOutcome) -> None:
        """Count one task and keep its outcome."""
        self.tasks_seen += 1
        row = outcome.row
        for name, values in self.columns[outcome.kind].items():
            values.append(row.get(name))

    def result(self, *, sort_by_task_id: bool = False) -> NormalizedTasks:
        """The three frames, in arrival order or (for pulls that merge stored and fresh outcomes) by task id."""
        cols = self.columns
        frames = (
            records_frame(cols["record"]),
            pd.DataFrame(cols["quarantined"], columns=list(QUARANTINE_COLUMNS)),
            pd.DataFrame(cols["unusable"], columns=list(UNUSABLE_COLUMNS)),
        )
        if sort_by_task_id:
            frames = tuple(_by_task_id(f) for f in frames)
        records, quarantined, unusable = frames
        return NormalizedTasks(records=records, quarantined=quarantined, unusable=unusable, tasks_seen=self.tasks_seen)


def _by_task_id(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` in task-id order (stable); returned as is when already in order (a full pull), not copied."""
    ids = frame["task_id"]
    if ids.is_monotonic_increasing:
        return frame
    return frame.sort_values("task_id", kind="stable").reset_index(drop=True)


def normalize_tasks(
    tasks: Iterable[dict[str, Any]], *, project_id: int | None = None, rule: AnnotationRule = "latest"
) -> NormalizedTasks:
    """Turn raw task dicts into PairRecords; every task ends in exactly one of the three outputs."""
    collector = OutcomeCollector()
    for task in tasks:
        if collector.check_id(task) is not None:
            collector.add(normalize_task(task, project_id=project_id, rule=rule))
    return collector.result()


def records_frame(rows: list[dict[str, Any]] | dict[str, list[Any]]) -> pd.DataFrame:
    """A PairRecords DataFrame with the contract's column order and dtypes, from rows or from columns.

    Each column is built once in its final dtype: text columns as object arrays of the very str objects
    given (pandas 3 would otherwise copy them into its string dtype, and converting back copies again).
    """
    cols = rows if isinstance(rows, dict) else {c: [r.get(c) for r in rows] for c in PAIR_COLUMNS}
    data: dict[str, Any] = {
        "task_id": np.asarray(cols["task_id"], dtype=np.int64),
        "annotation_id": pd.array(cols["annotation_id"], dtype="Int64"),
        "project_id": np.asarray(cols["project_id"], dtype=np.int64),
        # ISO8601 per element: Label Studio omits the fraction when microseconds are 0, and offsets vary.
        # Unparseable values become NaT and are quarantined by the schema's not_nullable check.
        "updated_at": pd.to_datetime(_objects(cols["updated_at"]), utc=True, errors="coerce", format="ISO8601"),
        "ground_truth": np.asarray(cols["ground_truth"], dtype=bool),
    }
    for col in ("prompt", "response", "category", "annotator", "system", "context"):
        data[col] = pd.Series(_objects(cols[col]), dtype=object, copy=False)  # missing text stays None
    return pd.DataFrame({c: data[c] for c in PAIR_COLUMNS}, copy=False)


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array holding exactly these objects (never split into nested arrays)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
