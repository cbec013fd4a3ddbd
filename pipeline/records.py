"""Label Studio tasks (API or JSON export) -> PairRecords, with every task accounted for.

Which annotation wins per task (the stated rule, DESIGN.md): cancelled (skipped) annotations
never count; among submitted ones a ground-truth annotation wins, else the most recently
updated one (ties broken by the higher annotation id). Drafts live outside `annotations`
and never reach training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from pipeline.labelstudio.labeling_config import CATEGORY_NAME, PROMPT_NAME, RESPONSE_NAME

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

# Longest failing value kept in reports; the full row stays in the snapshot's quarantine file.
_VALUE_PREVIEW = 120


def preview(value: object) -> str:
    """A value shortened for a report cell; repr() so that stray whitespace stays visible."""
    text = repr(value)
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 1] + "…"


@dataclass(frozen=True)
class NormalizedTasks:
    """The result of normalizing one pull: records, quarantined tasks and unusable tasks."""

    records: pd.DataFrame  # PAIR_COLUMNS
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS, stage == "normalize"
    unusable: pd.DataFrame  # UNUSABLE_COLUMNS
    tasks_seen: int


def pick_annotation(task: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The winning annotation of a task, or (None, reason) when there is no usable one."""
    annotations = [a for a in (task.get("annotations") or []) if isinstance(a, dict)]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if annotations:
            return None, "only_skipped"
        if task.get("drafts"):
            return None, "only_drafts"
        return None, "no_annotation"
    pool = [a for a in submitted if a.get("ground_truth")] or submitted
    winner = max(pool, key=lambda a: (_instant(a.get("updated_at")), _int_or_zero(a.get("id"))))
    return winner, None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _instant(value: object) -> datetime:
    """A timestamp as an aware UTC datetime: compared as instants, not strings (".5Z" vs "Z", offsets)."""
    if not isinstance(value, str):
        return _EPOCH
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return _EPOCH
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _result_value(annotation: dict[str, Any], from_name: str, key: str) -> list[Any] | None:
    for item in annotation.get("result") or []:
        if isinstance(item, dict) and item.get("from_name") == from_name:
            value = item.get("value") or {}
            got = value.get(key) if isinstance(value, dict) else None
            return got if isinstance(got, list) else None
    return None


def _annotator(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # exports may expand the user
        who = who.get("email") or who.get("id")
    return "" if who is None else str(who)


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def normalize_tasks(tasks: Iterable[dict[str, Any]], *, project_id: int | None = None) -> NormalizedTasks:
    """Turn raw task dicts into PairRecords; every task ends in exactly one of the three outputs."""
    rows: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    unusable: list[dict[str, Any]] = []
    seen_ids: set[int] = set()
    n = 0

    def reject(task_id: int | None, ann_id: int | None, check: str, reason: str, value: object) -> None:
        quarantined.append(
            {
                "task_id": task_id,
                "annotation_id": ann_id,
                "stage": "normalize",
                "check": check,
                "reason": reason,
                "value": preview(value),
            }
        )

    for task in tasks:
        n += 1
        raw_id = task.get("id") if isinstance(task, dict) else None
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            reject(None, None, "task_id_invalid", "task has no integer id", raw_id)
            continue
        task_id = raw_id
        if task_id in seen_ids:
            reject(task_id, None, "task_id_duplicate", f"task id {task_id} appears more than once", task_id)
            continue
        seen_ids.add(task_id)
        annotation, why = pick_annotation(task)
        if annotation is None:
            unusable.append({"task_id": task_id, "reason": why})
            continue
        ann_id = int(annotation.get("id") or 0) or None
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        prompt = data.get(PROMPT_NAME)
        if not isinstance(prompt, str):
            reject(task_id, ann_id, "prompt_is_text", f"data.{PROMPT_NAME} is missing or not a string", prompt)
            continue
        texts = _result_value(annotation, RESPONSE_NAME, "text")
        if texts is None:
            names = sorted({str(i.get("from_name")) for i in annotation.get("result") or [] if isinstance(i, dict)})
            if names:
                reject(
                    task_id,
                    ann_id,
                    "result_matches_config",
                    f"annotation has no {RESPONSE_NAME!r} TextArea result (found {names}); "
                    "was it made with another labeling config?",
                    names,
                )
            else:
                unusable.append({"task_id": task_id, "reason": "empty_response"})
            continue
        if not all(isinstance(t, str) for t in texts):
            reject(task_id, ann_id, "response_is_text", "response text is not a string", texts)
            continue
        choices = _result_value(annotation, CATEGORY_NAME, "choices")
        if choices is not None and len(choices) > 1:
            reject(task_id, ann_id, "single_category", "more than one category chosen", choices)
            continue
        category = choices[0] if choices else None
        if category is not None and not isinstance(category, str):
            reject(task_id, ann_id, "category_is_text", "category is not a string", category)
            continue
        updated = annotation.get("updated_at") or annotation.get("created_at")
        rows.append(
            {
                "task_id": task_id,
                "annotation_id": ann_id,
                "project_id": int(task.get("project") or project_id or 0),
                "prompt": prompt,
                # TextArea keeps one text per submission; several are joined line by line.
                "response": "\n".join(texts),
                "category": category,
                "annotator": _annotator(annotation),
                "updated_at": updated,
                "ground_truth": bool(annotation.get("ground_truth")),
                "system": _optional_text(data, "system"),
                "context": _optional_text(data, "context"),
            }
        )

    records = records_frame(rows)
    return NormalizedTasks(
        records=records,
        quarantined=pd.DataFrame(quarantined, columns=list(QUARANTINE_COLUMNS)),
        unusable=pd.DataFrame(unusable, columns=list(UNUSABLE_COLUMNS)),
        tasks_seen=n,
    )


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A PairRecords DataFrame with the contract's column order and dtypes."""
    df = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    df["task_id"] = df["task_id"].astype("int64")
    df["annotation_id"] = df["annotation_id"].astype("Int64")
    df["project_id"] = df["project_id"].astype("int64")
    # ISO8601 per element: Label Studio omits the fraction when microseconds are 0, and offsets vary.
    # Unparseable values become NaT and are quarantined by the schema's not_nullable check.
    df["updated_at"] = pd.to_datetime(df["updated_at"], utc=True, errors="coerce", format="ISO8601")
    df["ground_truth"] = df["ground_truth"].astype(bool)
    for col in ("prompt", "response", "category", "annotator", "system", "context"):
        df[col] = df[col].astype(object)
    return df.reset_index(drop=True)
