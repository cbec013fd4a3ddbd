"""Strict types at the ingest boundary (pipeline/ingest/task_checks.py): bad input gets a reason, never a
traceback or a wrong meaning. One test per case the malformed-export probe found (issue 17, item 6)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.config import LabelStudioConfig
from pipeline.ingest.client import LabelStudioError, _json, parse_json
from pipeline.ingest.export_file import pull_export_file, read_export_file
from pipeline.ingest.incremental import _by_id, canonical_task, updated_after
from pipeline.ingest.records import NORMALIZE_HINTS, normalize_tasks
from pipeline.ingest.task_checks import CHECK_HINTS
from pipeline.ingest.task_store import STORE_FORMAT
from pipeline.validate.feedback import markers
from tests.test_records import annotation, choices, only_quarantine, only_record, task, textarea

CFG = LabelStudioConfig(categories=("schedules", "tickets"))


def quarantined(t: dict[str, Any], **kw: Any) -> pd.Series:
    """The one quarantine row of a one-task pull, through the canonical form export files and the API share."""
    return only_quarantine(normalize_tasks([canonical_task(t)], **kw))


# ---- booleans: JSON true/false only ----


@pytest.mark.parametrize("value", ["false", "0", "true", 0, 1, [], {}])
def test_ground_truth_that_is_not_a_boolean_is_quarantined(value: object) -> None:
    """`ground_truth: "false"` was truthy, so the annotation won as ground truth; now the task is quarantined."""
    q = quarantined(task(5, [annotation(51, ground_truth=value), annotation(52)]))  # type: ignore[arg-type]
    assert q["check"] == "flag_is_boolean"
    assert q["task_id"] == 5 and q["annotation_id"] == 51
    assert "task 5, annotation 51: ground_truth" in q["reason"] and "JSON boolean" in q["reason"]


@pytest.mark.parametrize("value", ["false", "0", "no", 0])
def test_was_cancelled_that_is_not_a_boolean_is_quarantined(value: object) -> None:
    """`was_cancelled: "false"` was truthy, so the submission was read as a skip (only_skipped); now quarantined."""
    q = quarantined(task(6, [annotation(61, was_cancelled=value)]))  # type: ignore[arg-type]
    assert q["check"] == "flag_is_boolean"
    assert q["annotation_id"] == 61
    assert "task 6, annotation 61: was_cancelled" in q["reason"]


def test_a_malformed_flag_on_a_losing_annotation_still_quarantines() -> None:
    """The winner rule reads every annotation's flags, so a malformed one anywhere makes the winner unknowable."""
    anns = [annotation(71, updated_at="2024-05-03T00:00:00Z"), annotation(72, ground_truth="true")]  # type: ignore[arg-type]
    assert quarantined(task(7, anns))["annotation_id"] == 72


def test_missing_or_null_flags_mean_not_set() -> None:
    """A missing or null flag is Label Studio's default (false), not a malformed one."""
    ann = annotation(81)
    del ann["ground_truth"]
    ann["was_cancelled"] = None
    rec = only_record(normalize_tasks([canonical_task(task(8, [ann]))]))
    assert rec["annotation_id"] == 81 and not rec["ground_truth"]


# ---- ids: integers in 1..2^63-1 ----


@pytest.mark.parametrize("value", [None, "12", 0, -1, 1.0, True, 2**63, 2**64])
def test_invalid_annotation_id_is_quarantined_not_accepted_as_na(value: object) -> None:
    """An annotation without a valid id was accepted with annotation_id NA, losing lineage; now quarantined."""
    q = quarantined(task(9, [annotation(value)]))  # type: ignore[arg-type]
    assert q["check"] == "annotation_id_invalid"
    assert q["task_id"] == 9 and pd.isna(q["annotation_id"])
    assert "task 9, annotation #1: id" in q["reason"] and "1..2^63-1" in q["reason"]


@pytest.mark.parametrize("value", [2**63, 2**64 + 1, 0, -5, True])
def test_task_id_out_of_range_is_quarantined_with_its_position(value: int) -> None:
    """An id past int64 raised OverflowError when the frames were built; now task_id_invalid naming the position."""
    result = normalize_tasks([task(1, [annotation(1)]), task(value, [annotation(2)])])
    assert result.records["task_id"].tolist() == [1]
    q = result.quarantined.iloc[0]
    assert q["check"] == "task_id_invalid" and pd.isna(q["task_id"])
    assert "task #2 of the source" in q["reason"]


def test_task_that_is_not_an_object_is_reported_with_its_position() -> None:
    """A list entry that is not a task at all is accounted for, naming its position."""
    q = only_quarantine(normalize_tasks(["not a task"]))  # type: ignore[list-item]
    assert q["check"] == "task_id_invalid" and "task #1 of the source is not an object" in q["reason"]


def test_project_id_out_of_range_is_quarantined() -> None:
    """A project id past int64 overflowed the project_id column."""
    t = task(3, [annotation(31)])
    t["project"] = 2**64
    q = quarantined(t)
    assert q["check"] == "project_id_invalid" and "task 3: project" in q["reason"]


@pytest.mark.parametrize("who", ["alice", 2**63, 0, True, {"email": 5}, {"id": "3"}])
def test_invalid_completed_by_is_quarantined(who: object) -> None:
    """The annotator is a user id or an expanded user object; anything else is not guessed at."""
    q = quarantined(task(4, [annotation(41, completed_by=who)]))
    assert q["check"] == "annotator_valid" and "task 4, annotation 41: completed_by" in q["reason"]


def test_huge_ids_in_an_export_file_are_reasons_not_tracebacks(tmp_path: Path) -> None:
    """ids >= 2^63 straight from JSON text (orjson reads ids past 2^64 as floats): reasons, no OverflowError."""
    good = task(1, [annotation(11)])
    raw = json.dumps(
        [good, task(2**63, [annotation(12)]), task(3, [annotation(2**64)]), {**good, "id": 4, "project": 2**70}]
    )
    path = tmp_path / "export.json"
    path.write_text(raw)
    normalized = pull_export_file(path, CFG).normalized
    assert normalized.records["task_id"].tolist() == [1]
    assert sorted(normalized.quarantined["check"]) == ["annotation_id_invalid", "project_id_invalid", "task_id_invalid"]


# ---- timestamps: ISO 8601 between 1970 and 2261 ----


@pytest.mark.parametrize(
    "stamp",
    [
        "9999-12-31T23:59:59-01:00",  # OverflowError when moved to UTC
        "0001-01-01T00:00:00+01:00",  # the same at the other edge
        "2300-01-01T00:00:00Z",  # beyond pandas' nanosecond range
        "1969-12-31T23:59:59Z",
        "not a time",
        "2024-13-45T00:00:00Z",
        "",
        12345,
    ],
)
@pytest.mark.parametrize("field", ["updated_at", "created_at"])
def test_unparsable_or_out_of_range_timestamp_is_quarantined(field: str, stamp: object) -> None:
    """Edge-of-calendar timestamps with an offset raised OverflowError; now `timestamp_valid` naming the field."""
    ann = annotation(21)
    ann[field] = stamp
    q = quarantined(task(2, [ann, annotation(22)]))
    assert q["check"] == "timestamp_valid" and q["annotation_id"] == 21
    assert f"task 2, annotation 21: {field}" in q["reason"]


def test_updated_at_is_stored_in_one_utc_form() -> None:
    """An accepted timestamp is written in one canonical UTC form, whatever offset and precision it came in."""
    t = task(1, [annotation(1, updated_at="2024-05-01T12:30:00.25+02:00")])
    rec = only_record(normalize_tasks([t]))
    assert rec["updated_at"] == pd.Timestamp("2024-05-01T10:30:00.25", tz="UTC")


def test_edge_stamps_do_not_overflow_the_incremental_window() -> None:
    """The task's own `updated_at` (the incremental stamp) at the calendar's edge is simply not recent."""
    floor = datetime(2024, 1, 1, tzinfo=UTC)
    assert updated_after("9999-12-31T23:59:59-01:00", floor) is False
    assert updated_after("0001-01-01T00:00:00+01:00", floor) is False
    assert updated_after("2024-06-01T00:00:00Z", floor) is True


# ---- results: one response and one category result per annotation ----


def test_second_response_result_is_quarantined() -> None:
    """A second TextArea result was silently ignored (the first won); now quarantined, stating the rule."""
    ann = annotation(31, result=[textarea("first"), choices("tickets"), textarea("second")])
    q = quarantined(task(3, [ann]))
    assert q["check"] == "single_response_result" and q["annotation_id"] == 31
    assert "one 'response' result per annotation" in q["reason"]
    assert "first" in q["value"] and "second" in q["value"]


def test_second_category_result_is_quarantined() -> None:
    """A second Choices result was silently ignored; now quarantined, stating the rule."""
    ann = annotation(32, result=[textarea("answer"), choices("tickets"), choices("schedules")])
    q = quarantined(task(3, [ann]))
    assert q["check"] == "single_category_result"
    assert "one 'category' result per annotation" in q["reason"]


@pytest.mark.parametrize(
    ("result", "check"),
    [
        ("a string", "result_is_list"),
        ({"from_name": "response"}, "result_is_list"),
        ([5], "result_item_well_formed"),
        ([{"from_name": 5, "value": {}}], "result_item_well_formed"),
        ([{"from_name": "response", "value": {"text": "not a list"}}], "result_item_well_formed"),
        ([{"from_name": "category", "value": []}], "result_item_well_formed"),
    ],
)
def test_malformed_result_gets_its_own_reason(result: object, check: str) -> None:
    """A result that is not a list (was read as 'no response') or holds malformed items is quarantined."""
    q = quarantined(task(4, [annotation(41, result=result)]))  # type: ignore[arg-type]
    assert q["check"] == check and "task 4, annotation 41: result" in q["reason"]


# ---- task data and the annotation list ----


@pytest.mark.parametrize("key", ["system", "context"])
@pytest.mark.parametrize("value", [17, ["a"], {"text": "x"}, True])
def test_non_string_system_or_context_is_quarantined(key: str, value: object) -> None:
    """A non-string system/context was dropped while the row was accepted without it; now quarantined."""
    q = quarantined(task(5, [annotation(51)], **{key: value}))
    assert q["check"] == f"{key}_is_text" and q["annotation_id"] == 51
    assert f"task 5: data.{key}" in q["reason"]


@pytest.mark.parametrize("data", [["prompt", "x"], "a string", 5])
def test_data_that_is_not_an_object_gets_its_own_reason(data: object) -> None:
    t = task(6, [annotation(61)])
    t["data"] = data
    q = quarantined(t)
    assert q["check"] == "data_is_object" and "task 6: data is" in q["reason"]


@pytest.mark.parametrize(("annotations", "check"), [("x", "annotations_is_list"), ({"id": 1}, "annotations_is_list"), ([None], "annotation_is_object"), (["x", 5], "annotation_is_object")])  # fmt: skip
def test_malformed_annotation_list_is_not_read_as_no_annotation(annotations: object, check: str) -> None:
    """A non-list `annotations` or a non-object annotation was read as 'no annotation'; now quarantined."""
    t = task(7, [])
    t["annotations"] = annotations
    q = quarantined(t)
    assert q["check"] == check and q["reason"].startswith("task 7")


# ---- nesting: a clean error or a bounded preview, never RecursionError ----


@pytest.mark.parametrize("depth", [1_100, 5_000, 100_000])
def test_export_file_nested_too_deeply_is_a_clean_error(tmp_path: Path, depth: int) -> None:
    """orjson refuses nesting past 1,024 levels, and the stdlib fallback hit RecursionError; now a ValueError."""
    path = tmp_path / "deep.json"
    path.write_text('[{"id": 1, "data": {"prompt": ' + "[" * depth + "]" * depth + "}}]")
    with pytest.raises(ValueError, match=r"deep\.json is not usable JSON: nested too deeply"):
        read_export_file(path)


def test_export_file_with_a_5000_digit_number_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "digits.json"
    path.write_text('[{"id": ' + "9" * 5000 + "}]")
    with pytest.raises(ValueError, match=r"digits\.json is not JSON"):
        read_export_file(path)


def test_nesting_just_below_orjsons_limit_is_previewed_not_recursed(tmp_path: Path) -> None:
    """1,010 levels parse; the quarantine value is a bounded preview (repr would recurse past the limit)."""
    prompt = "[" * 1010 + "]" * 1010
    path = tmp_path / "e.json"
    ok = json.dumps(annotation(1))
    path.write_text(f'[{{"id": 1, "data": {{"prompt": {prompt}}}, "annotations": [{ok}]}}]')
    q = only_quarantine(pull_export_file(path, CFG).normalized)
    assert q["check"] == "prompt_is_text" and len(q["value"]) < 130


def test_api_answer_nested_too_deeply_is_a_label_studio_error() -> None:
    """An API answer nested past orjson's limit is a LabelStudioError naming the request, not RecursionError."""
    body = b"[" * 5000 + b"]" * 5000
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(body, "an answer")
    with pytest.raises(LabelStudioError, match=r"GET /api/projects/1/export's answer is not usable JSON"):
        _json(body, "/api/projects/1/export")


def test_export_answer_with_an_unusable_task_id_is_a_label_studio_error() -> None:
    """The API path sorts tasks by id: an answer with a task without a valid id is a clean server error."""
    with pytest.raises(LabelStudioError, match=r"task #2 has id '3'"):
        _by_id([{"id": 1}, {"id": "3"}])
    with pytest.raises(LabelStudioError, match=r"task #1 is not an object"):
        _by_id([[1]])


# ---- the reasons reach annotators, and stores of the lenient format are not reused ----


def test_every_new_check_has_a_fix_hint_that_feedback_shows() -> None:
    """Each check of task_checks has its how-to-fix line in the annotators' feedback marker."""
    assert set(CHECK_HINTS) <= set(NORMALIZE_HINTS)
    q = normalize_tasks([task(5, [annotation(51, ground_truth="false")])]).quarantined  # type: ignore[arg-type]
    problem = markers(q)[5]["problems"][0]
    assert problem["check"] == "flag_is_boolean" and problem["fix"] == CHECK_HINTS["flag_is_boolean"]


def test_store_format_was_bumped_for_the_strict_reading() -> None:
    """Stores written by the lenient normalizer (format 3) hold outcomes of another meaning: a full pull follows."""
    assert STORE_FORMAT >= 4  # 5 added every annotator's answers (overlap.py)


def test_webhook_ids_past_int64_and_deep_jsonl_are_clean_errors(tmp_path: Path) -> None:
    """The other JSON readers of ingest: a webhook naming an id past 2^63, a JSONL line nested 100,000 deep."""
    from pipeline.ingest.webhooks import parse_webhook
    from pipeline.jsonl import read_jsonl_objects

    body = json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 2**64}}).encode()
    with pytest.raises(ValueError, match=r"'project.id' must be an id in 1..2\^63-1"):
        parse_webhook(body)
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"tasks\.jsonl line 1: unusable JSON"):
        read_jsonl_objects(path, "tasks.jsonl")
