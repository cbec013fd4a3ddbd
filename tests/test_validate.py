"""Tests for the row checks (schemas/pairs.py via pipeline/validate/checks.py), reconciliation and the Markdown report."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from pipeline.ingest.reconcile import ReconciliationError, reconcile
from pipeline.ingest.records import QUARANTINE_COLUMNS, UNUSABLE_COLUMNS, normalize_tasks, records_frame
from pipeline.validate.checks import ValidationResult, validate_records
from pipeline.validate.report import validation_markdown
from schemas.pairs import FIX_HINTS

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")


def row(task_id: int, **overrides: Any) -> dict[str, Any]:
    """A clean PairRecord row; overrides make it bad in one chosen way."""
    base: dict[str, Any] = {
        "task_id": task_id,
        "annotation_id": 1000 + task_id,
        "project_id": 3,
        "prompt": f"When does ferry {task_id} leave?",
        "response": "At 09:30 from pier 2.",
        "category": "schedules",
        "annotator": "7",
        "updated_at": "2024-05-01T10:00:00.123456Z",
        "ground_truth": False,
        "system": None,
        "context": None,
    }
    return {**base, **overrides}


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return records_frame(list(rows))


def concat_quarantine(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Normalize + validate quarantine rows in one frame, as the ingest stage builds it."""
    frames = [f for f in (a, b) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else a


def no_unusable() -> pd.DataFrame:
    return pd.DataFrame(columns=list(UNUSABLE_COLUMNS))


def checks_for(result: ValidationResult, task_id: int) -> set[str]:
    q = result.quarantined
    return set(q.loc[q["task_id"] == task_id, "check"])


def test_clean_rows_pass() -> None:
    """Clean rows are all valid, none quarantined, and keep their values."""
    records = frame(row(1), row(2, category="tickets", system="Be brief.", context="pier map"))
    result = validate_records(records, CATEGORIES)
    assert result.quarantined.empty
    assert list(QUARANTINE_COLUMNS) == list(result.quarantined.columns)
    assert result.valid["task_id"].tolist() == [1, 2]
    assert pd.isna(result.valid["system"].iloc[0])  # missing stays missing (pandera coerces None to NaN)
    assert result.valid["system"].iloc[1] == "Be brief."
    assert result.valid["context"].iloc[1] == "pier map"


@pytest.mark.parametrize("field", ["prompt", "response"])
@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_not_empty(field: str, value: str) -> None:
    """A prompt or response that is empty or whitespace-only fails `not_empty`."""
    result = validate_records(frame(row(1), row(2, **{field: value})), CATEGORIES)
    assert "not_empty" in checks_for(result, 2)
    assert result.valid["task_id"].tolist() == [1]
    assert checks_for(result, 1) == set()


@pytest.mark.parametrize("field", ["prompt", "response"])
@pytest.mark.parametrize("value", [" leading", "trailing ", "trailing newline\n", "\tTab first"])
def test_no_surrounding_whitespace(field: str, value: str) -> None:
    """Leading/trailing spaces, tabs or newlines fail `no_surrounding_whitespace` (inner ones do not)."""
    result = validate_records(frame(row(1, **{field: "inner spaces\nand lines"}), row(2, **{field: value})), None)
    assert checks_for(result, 2) == {"no_surrounding_whitespace"}
    assert result.valid["task_id"].tolist() == [1]


@pytest.mark.parametrize("category", ["ferries", "Schedules", None])
def test_category_in_project_choices(category: str | None) -> None:
    """An unknown (or differently cased) or missing category fails `category_in_project_choices`."""
    result = validate_records(frame(row(1), row(2, category=category)), CATEGORIES)
    assert checks_for(result, 2) == {"category_in_project_choices"}
    assert result.valid["task_id"].tolist() == [1]


@pytest.mark.parametrize("category", ["ferries", None])
def test_categories_none_skips_category_check(category: str | None) -> None:
    """Without project categories, any category (or none) is accepted."""
    result = validate_records(frame(row(1, category=category)), None)
    assert result.quarantined.empty
    got = result.valid["category"].iloc[0]
    assert pd.isna(got) if category is None else got == category
    assert not any("category_in_project_choices" in c for c in result.checks_run)
    assert "category:category_in_project_choices" in validate_records(frame(row(1)), CATEGORIES).checks_run


def test_checks_run_lists_each_named_rule() -> None:
    """checks_run names every rule as `column:check`, so reports read as a checklist."""
    checks = validate_records(frame(row(1)), CATEGORIES).checks_run
    for expected in (
        "prompt:not_empty",
        "response:not_empty",
        "prompt:no_surrounding_whitespace",
        "response:no_surrounding_whitespace",
        "category:category_in_project_choices",
        "task_id:unique",
        "updated_at:not_nullable",
    ):
        assert expected in checks
    assert list(checks) == sorted(checks)


def test_quarantine_rows_carry_identity_and_evidence() -> None:
    """Each quarantine row names task, annotation, stage 'validate', the check and the failing value."""
    result = validate_records(frame(row(1), row(5, response=" padded")), CATEGORIES)
    q = result.quarantined
    assert len(q) == 1
    r = q.iloc[0]
    assert r["task_id"] == 5
    assert r["annotation_id"] == 1005
    assert r["stage"] == "validate"
    assert r["check"] == "no_surrounding_whitespace"
    assert "response" in r["reason"]
    assert r["value"] == repr(" padded")


def test_no_row_dropped_silently() -> None:
    """Every input task id is either valid or quarantined, and the two sets do not overlap."""
    records = frame(
        row(1),
        row(2, prompt=""),
        row(3, response="x "),
        row(4, category="unknown"),
        row(5, category=None),
        row(6, prompt=" ", category="nope"),
        row(7, updated_at=None),
        row(8),
    )
    result = validate_records(records, CATEGORIES)
    valid = set(result.valid["task_id"])
    bad = set(result.quarantined["task_id"])
    assert valid == {1, 8}
    assert bad == {2, 3, 4, 5, 6, 7}
    assert valid | bad == set(records["task_id"])
    assert valid.isdisjoint(bad)
    assert checks_for(result, 7) == {"not_nullable"}


def test_empty_frame_returns_empty_outputs() -> None:
    """An empty pull validates to empty valid and quarantine frames (with the checks still listed)."""
    result = validate_records(records_frame([]), CATEGORIES)
    assert result.valid.empty
    assert result.quarantined.empty
    assert list(result.quarantined.columns) == list(QUARANTINE_COLUMNS)
    assert "prompt:not_empty" in result.checks_run


def test_missing_column_is_a_contract_error() -> None:
    """A frame without a contract column is not any row's fault: it raises ValueError instead of quarantining."""
    records = frame(row(1), row(2)).drop(columns=["annotator"])
    with pytest.raises(ValueError, match="data contract"):
        validate_records(records, CATEGORIES)


# ---- reconciliation ----


def test_reconcile_adds_up() -> None:
    """tasks seen = accepted + quarantined + unusable, with per-check and per-reason breakdowns."""
    tasks = [
        {"id": 1, "data": {"prompt": "Q?"}, "annotations": [_ann(11, "A.")]},
        {"id": 2, "data": {"prompt": "Q?"}, "annotations": [_ann(12, " A.")]},
        {"id": 3, "data": {"prompt": "Q?"}, "annotations": []},
        {"id": 4, "data": {"prompt": None}, "annotations": [_ann(14, "A.")]},
        {"id": None, "data": {"prompt": "Q?"}, "annotations": [_ann(15, "A.")]},
        {"id": "x", "data": {"prompt": "Q?"}, "annotations": [_ann(16, "A.")]},
    ]
    norm = normalize_tasks(tasks)
    result = validate_records(norm.records, CATEGORIES)
    quarantined = concat_quarantine(norm.quarantined, result.quarantined)
    rec = reconcile(norm.tasks_seen, result.valid, quarantined, norm.unusable)
    assert (rec.tasks_seen, rec.accepted, rec.quarantined, rec.unusable) == (6, 1, 4, 1)
    assert rec.quarantined_by_check == {"no_surrounding_whitespace": 1, "prompt_is_text": 1, "task_id_invalid": 2}
    assert rec.unusable_by_reason == {"no_annotation": 1}
    assert rec.as_dict()["accepted"] == 1


def test_reconcile_raises_when_counts_do_not_add_up() -> None:
    """A pull whose buckets do not sum to tasks seen raises ReconciliationError with the numbers."""
    result = validate_records(frame(row(1), row(2)), CATEGORIES)
    with pytest.raises(ReconciliationError, match=r"3 tasks seen but 2 accepted"):
        reconcile(3, result.valid, result.quarantined, no_unusable())
    with pytest.raises(ReconciliationError):
        reconcile(1, result.valid, result.quarantined, no_unusable())
    assert reconcile(2, result.valid, result.quarantined, no_unusable()).accepted == 2


def test_task_failing_two_checks_counts_once() -> None:
    """A task with two failed checks is two quarantine rows but one quarantined task."""
    result = validate_records(frame(row(1), row(2, prompt="", category="unknown")), CATEGORIES)
    assert checks_for(result, 2) == {"not_empty", "category_in_project_choices"}
    assert len(result.quarantined) == 2
    rec = reconcile(2, result.valid, result.quarantined, no_unusable())
    assert rec.quarantined == 1
    assert rec.accepted == 1
    assert sum(rec.quarantined_by_check.values()) == 1


@pytest.mark.parametrize("first_prompt", [None, " padded"], ids=["first-copy-normalize", "first-copy-validate"])
def test_reconcile_duplicate_task_whose_first_copy_was_quarantined(first_prompt: str | None) -> None:
    """Two tasks with the same id, both quarantined (first for its content, second as a duplicate), reconcile."""
    tasks = [
        {"id": 1, "data": {"prompt": first_prompt}, "annotations": [_ann(11, "A.")]},
        {"id": 1, "data": {"prompt": "Q?"}, "annotations": [_ann(12, "A.")]},
    ]
    norm = normalize_tasks(tasks)
    result = validate_records(norm.records, CATEGORIES)
    quarantined = concat_quarantine(norm.quarantined, result.quarantined)
    assert len(quarantined) == 2  # both tasks are accounted for in the quarantine ...
    rec = reconcile(norm.tasks_seen, result.valid, quarantined, norm.unusable)  # ... so this must add up
    assert rec.quarantined == 2


def _ann(ann_id: int, text: str) -> dict[str, Any]:
    return {
        "id": ann_id,
        "completed_by": 7,
        "was_cancelled": False,
        "ground_truth": False,
        "updated_at": "2024-05-01T10:00:00.123456Z",
        "result": [
            {"from_name": "response", "to_name": "prompt", "type": "textarea", "value": {"text": [text]}},
            {"from_name": "category", "to_name": "prompt", "type": "choices", "value": {"choices": ["tickets"]}},
        ],
    }


# ---- the Markdown report ----


def _report(records: pd.DataFrame) -> tuple[str, ValidationResult]:
    result = validate_records(records, CATEGORIES)
    rec = reconcile(len(records), result.valid, result.quarantined, no_unusable())
    return validation_markdown(rec, result.quarantined, result.checks_run), result


def test_markdown_has_counts_checks_and_fix_hints() -> None:
    """The report shows the reconciliation numbers, each failing check with its how-to-fix hint, and checks run."""
    records = frame(row(1), row(2), row(3, prompt=""), row(4, response="trailing "), row(5, category="ferries"))
    md, result = _report(records)
    assert "tasks seen" in md
    assert "rows accepted" in md
    lines = md.splitlines()
    assert any(line.startswith("tasks seen") and line.split()[-1] == "5" for line in lines)
    assert any(line.startswith("rows accepted") and line.split()[-1] == "2" for line in lines)
    assert any(line.startswith("rows quarantined") and line.split()[-1] == "3" for line in lines)
    for task_id, check in ((3, "not_empty"), (4, "no_surrounding_whitespace"), (5, "category_in_project_choices")):
        assert f"failed {check}" in md  # in the reconciliation table
        table_rows = [line for line in lines if line.startswith(f"| {task_id} |")]
        assert len(table_rows) == 1, table_rows
        unescaped = table_rows[0].replace("\\", "")
        assert check in unescaped
        assert FIX_HINTS[check] in unescaped
    for check in result.checks_run:
        assert f"- `{check}`" in md


def test_markdown_without_failures() -> None:
    """A clean pull says so instead of printing an empty table."""
    md, _ = _report(frame(row(1), row(2)))
    assert "No row failed a check." in md
    assert "| task |" not in md


def test_markdown_escapes_markup_in_values() -> None:
    """Task text is data: HTML and table pipes from a response never appear unescaped in the report."""
    records = frame(row(1), row(2, response=" <script>alert(1)</script>"), row(3, prompt="a | b | c "))
    md, _ = _report(records)
    assert "<script>" not in md
    assert "</script>" not in md
    assert r"\<script\>alert(1)\</script\>" in md
    row3 = next(line for line in md.splitlines() if line.startswith("| 3 |"))
    assert row3.count(" | ") + 2 == 9  # 8 cells: the pipes inside the value do not add columns
    assert r"a \| b \| c" in row3
