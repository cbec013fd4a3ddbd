"""Text users read says plain things: no numpy reprs, no `None` counts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from pipeline.config import LabelStudioConfig, ValidationConfig
from pipeline.ingest.client import annotation_result
from pipeline.ingest.export_file import pull_export_file
from pipeline.ingest.pull import pull_summary
from pipeline.validate.dataset_checks import balance_checks


def test_category_counts_are_plain_numbers() -> None:
    records = pd.DataFrame({"category": ["a"] * 50 + ["b"] * 3})
    detail = balance_checks(records, ValidationConfig())[1].detail
    assert "counts: a 50, b 3" in detail
    assert "np." not in detail and "int64" not in detail


def test_pull_summary_names_only_the_counts_a_pull_has(tmp_path: Path) -> None:
    ann = {"id": 1, "completed_by": 1, "result": annotation_result("Hi.", "x"), "was_cancelled": False}
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 1, "data": {"prompt": "Q?"}, "annotations": [ann], "project": 3}]))
    pull = pull_export_file(path, LabelStudioConfig(categories=("x",)))
    line = pull_summary(pull)
    assert line.startswith(f"file pull of {path} project 3") and line.endswith(": 1 tasks")
    full = dataclasses.replace(pull, source={"mode": "full", "url": "http://ls", "tasks_normalized": 1})
    assert "None" not in pull_summary(full) and "changed" not in pull_summary(full)
    incremental = dataclasses.replace(
        pull,
        source={
            "mode": "incremental",
            "url": "http://ls",
            "tasks_normalized": 0,
            "tasks_changed": 0,
            "tasks_deleted": 0,
            "tasks_drafts_changed": None,
        },
    )
    assert pull_summary(incremental).endswith("; 0 changed, 0 deleted, 1 reused from the last pull")


def test_summary_and_reconciliation_count_alike() -> None:
    """A row failing two checks counts once in both tables, under the same check; the other is noted."""
    from pipeline.ingest.reconcile import reconcile
    from pipeline.ingest.records import records_frame
    from pipeline.validate.checks import validate_records
    from pipeline.validate.report import validation_summary

    def row(tid: int, response: str) -> dict[str, object]:
        return {
            "task_id": tid,
            "annotation_id": tid,
            "project_id": 1,
            "prompt": f"Question {tid}?",
            "response": response,
            "category": "a",
            "annotator": "1",
            "updated_at": "2026-01-01T00:00:00Z",
            "ground_truth": False,
            "system": None,
            "context": None,
        }

    records = records_frame([row(1, "Fine."), row(2, "Trailing "), row(3, " Leading"), row(4, "   ")])
    result = validate_records(records, ("a",))
    rec = reconcile(4, result.valid, result.quarantined, pd.DataFrame({"task_id": [], "reason": []}))
    summary = {
        line.split()[0]: int(line.split()[1])
        for line in validation_summary(result).splitlines()
        if line.startswith("  ") and not line.startswith("  FAILED")
    }
    table = {line.split()[1]: int(line.split()[2]) for line in rec.table().splitlines() if line.startswith("  failed ")}
    assert table == {k: v for k, v in summary.items() if v}
    assert sum(table.values()) == rec.quarantined == 3
    assert "counted under another check" in validation_summary(result)
