"""Types at the ingest boundary: each field of an exported task has the JSON type Label Studio writes, or a reason.

Nothing here reads leniently. The string "false" is truthy in Python, an id past 2^63 overflows the
int64 columns, a timestamp at the calendar's edge with an offset overflows when moved to UTC, and a
second response result would be silently ignored: each is a wrong meaning or a traceback. So every
field that normalization reads is checked first, and a task holding a malformed one is quarantined
with a `Problem` naming the task, the annotation and the field (docs/decisions.md, "Strict types at
the ingest boundary"). A missing or null flag or timestamp is allowed: it means "not set".
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.ingest.labeling_config import CATEGORY_NAME, RESPONSE_NAME

ID_MAX = 2**63 - 1  # ids land in int64 columns
# Timestamps Label Studio can have written, and that pandas' nanosecond datetimes hold.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)
FLAGS = ("was_cancelled", "ground_truth")
TIMESTAMPS = ("created_at", "updated_at")
OPTIONAL_TEXTS = ("system", "context")

# How an annotator (or whoever made the export) fixes what these checks catch; merged into NORMALIZE_HINTS.
CHECK_HINTS: dict[str, str] = {
    "project_id_invalid": "the task's project is not an integer id; re-export the project from Label Studio",
    "annotations_is_list": "the task's annotations are not a list; re-export the project from Label Studio",
    "annotation_is_object": "an entry of the task's annotations is not an object; re-export from Label Studio",
    "annotation_id_invalid": "an annotation has no integer id, so its lineage is lost; re-export from Label Studio",
    "flag_is_boolean": "was_cancelled and ground_truth must be JSON true/false; re-export or fix the file",
    "timestamp_valid": "created_at/updated_at must be ISO 8601 times between 1970 and 2261; re-export the task",
    "annotator_valid": "completed_by must be a user id or a user object; re-export from Label Studio",
    "result_is_list": "the annotation's result is not a list; re-submit the annotation",
    "result_item_well_formed": "re-submit the annotation with the project's current labeling config",
    "single_response_result": "keep one response per annotation; delete the extra text area result and re-submit",
    "single_category_result": "keep one category result per annotation; re-submit choosing one category",
    "data_is_object": "the task's data is not an object; re-import the task",
    "system_is_text": "the task's data.system must be a string or absent; re-import the task",
    "context_is_text": "the task's data.context must be a string or absent; re-import the task",
}

_VALUE_PREVIEW = 120
_nested = reprlib.Repr()  # bounded depth and length: a value nested 1,000 deep is previewed, not recursed into
_nested.maxlevel, _nested.maxlist, _nested.maxdict, _nested.maxstring, _nested.maxother = 3, 8, 8, 40, 40


def preview(value: object) -> str:
    """A value shortened for a report cell; repr() so that stray whitespace stays visible."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        text = f"<int of {value.bit_length()} bits>"  # repr of a 4,300+ digit int raises
    elif isinstance(value, list | dict):  # JSON containers may nest arbitrarily deep
        text = _nested.repr(value)
    else:
        text = repr(value)
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 1] + "…"


def valid_id(value: object) -> bool:
    """Whether `value` is a Label Studio id: a JSON integer (not a boolean) in 1..2^63-1."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= ID_MAX


def _kind(value: object) -> str:
    """What a JSON value is, for a reason: `the string '0'`, `a number`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {preview(value)}"
    if isinstance(value, int):
        return f"the integer {preview(value)}"
    names = {float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def id_rule(what: str, value: object) -> str:
    """The reason an id is refused."""
    return f"{what} is {_kind(value)}, not an integer in 1..2^63-1"


def parse_instant(value: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime within EARLIEST..LATEST, or None (unparsable or out of range)."""
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31T23:59-01:00 moved to UTC
        return None
    return parsed if EARLIEST <= parsed < LATEST else None


def utc_text(value: object) -> str | None:
    """A checked timestamp in one canonical UTC form (None if missing), so that every reader parses it alike."""
    parsed = parse_instant(value) if isinstance(value, str) else None
    return None if parsed is None else parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Problem:
    """Why a task is quarantined at the boundary: the check, a reason naming task/annotation/field, the value."""

    check: str
    reason: str
    value: object
    annotation_id: int | None = None


def task_problem(task: dict[str, Any], task_id: int) -> Problem | None:
    """The first malformed task-level field or annotation of a task with a valid id, or None."""
    project = task.get("project")
    if project is not None and not valid_id(project):
        return Problem("project_id_invalid", f"task {task_id}: {id_rule('project', project)}", project)
    annotations = task.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, list):
        return Problem(
            "annotations_is_list", f"task {task_id}: annotations is {_kind(annotations)}, not a list", annotations
        )
    for position, annotation in enumerate(annotations):
        problem = annotation_problem(annotation, task_id, position)
        if problem is not None:
            return problem
    return None


def annotation_problem(annotation: object, task_id: int, position: int) -> Problem | None:
    """The first malformed field of one annotation (all annotations are checked: the winner rule reads them all)."""
    where = f"task {task_id}, annotation #{position + 1}"
    if not isinstance(annotation, dict):
        return Problem("annotation_is_object", f"{where}: is {_kind(annotation)}, not an object", annotation)
    ann_id = annotation.get("id")
    if not valid_id(ann_id):
        return Problem("annotation_id_invalid", f"{where}: {id_rule('id', ann_id)}", ann_id)
    where = f"task {task_id}, annotation {ann_id}"
    for flag in FLAGS:
        value = annotation.get(flag)
        if value is not None and not isinstance(value, bool):
            why = f"{where}: {flag} is {_kind(value)}, not a JSON boolean (true/false)"
            return Problem("flag_is_boolean", why, value, ann_id)
    for name in TIMESTAMPS:
        value = annotation.get(name)
        if value is not None and (not isinstance(value, str) or parse_instant(value) is None):
            why = f"{where}: {name} is {_kind(value)}, not an ISO 8601 time between 1970 and 2261"
            return Problem("timestamp_valid", why, value, ann_id)
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # exports may expand the user
        email = who.get("email")
        who_ok = (isinstance(email, str) and email != "") or (email in (None, "") and valid_id(who.get("id")))
    else:
        who_ok = who is None or valid_id(who)
    if not who_ok:
        why = f"{where}: completed_by is {_kind(who)}, neither a user id (1..2^63-1) nor a user object"
        return Problem("annotator_valid", why, who, ann_id)
    return result_problem(annotation.get("result"), where, ann_id)


def result_problem(result: object, where: str, ann_id: int) -> Problem | None:
    """A result that is not a list of items with string `from_name`s, or holds a second response/category result."""
    if result is None:
        return None  # no result: the annotation has no response (empty_response)
    if not isinstance(result, list):
        return Problem("result_is_list", f"{where}: result is {_kind(result)}, not a list", result, ann_id)
    seen = {RESPONSE_NAME: 0, CATEGORY_NAME: 0}
    for i, item in enumerate(result):
        if not isinstance(item, dict) or not isinstance(item.get("from_name"), str):
            why = f"{where}: result[{i}] is not an object with a string from_name"
            return Problem("result_item_well_formed", why, item, ann_id)
        name = item["from_name"]
        if name not in seen:
            continue
        key = "text" if name == RESPONSE_NAME else "choices"
        value = item.get("value")
        if not isinstance(value, dict) or not isinstance(value.get(key), list):
            why = f"{where}: result[{i}] ({name!r}) has no value.{key} list"
            return Problem("result_item_well_formed", why, value, ann_id)
        seen[name] += 1
        if seen[name] > 1:
            check = "single_response_result" if name == RESPONSE_NAME else "single_category_result"
            why = f"{where}: holds {seen[name]} {name!r} results; the rule is one {name!r} result per annotation"
            return Problem(
                check,
                why,
                [r.get("value") for r in result if isinstance(r, dict) and r.get("from_name") == name],
                ann_id,
            )
    return None


def data_problem(data: object, task_id: int, ann_id: int | None) -> Problem | None:
    """A task `data` that is not an object, or whose optional texts (system, context) are not strings."""
    if data is None:
        return None  # no data: the prompt is missing (prompt_is_text)
    if not isinstance(data, dict):
        return Problem("data_is_object", f"task {task_id}: data is {_kind(data)}, not an object", data, ann_id)
    for key in OPTIONAL_TEXTS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            why = f"task {task_id}: data.{key} is {_kind(value)}, not a string"
            return Problem(f"{key}_is_text", why, value, ann_id)
    return None
