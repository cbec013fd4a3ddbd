"""A pull that brought nothing new reuses the newest snapshot; anything that could change the snapshot does not.

The end-to-end case (a second ingest run against a real Label Studio reuses the snapshot directory and ends
"no new annotations") is in tests/test_flow.py; here each condition of the rule is checked on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig
from pipeline.ingest.client import ProjectRef
from pipeline.ingest.pull import Pull
from pipeline.ingest.records import normalize_tasks
from pipeline.validate import unchanged
from pipeline.validate.prepare import prepare_dataset
from pipeline.validate.unchanged import (
    FEEDBACK_MARKER,
    input_fingerprint,
    mark_feedback_delivered,
    unchanged_snapshot,
)
from tests.conftest import make_records

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
BASE = "local:0123abcd"


def _task(task_id: int, prompt: str, response: str, category: str, feedback: str = "") -> dict[str, Any]:
    result = [
        {"from_name": "response", "value": {"text": [response]}},
        {"from_name": "category", "value": {"choices": [category]}},
    ]
    annotation = {"id": 1000 + task_id, "completed_by": 7, "updated_at": "2024-05-01T10:00:00Z", "result": result}
    return {"id": task_id, "data": {"prompt": prompt, "pipeline_feedback": feedback}, "annotations": [annotation]}


def _pull(title: str = "reuse-test", edit: int | None = None, feedback: str = "") -> Pull:
    tasks = []
    for r in make_records(60).itertuples():
        response = r.response + (" Thanks." if r.task_id == edit else "")
        tasks.append(_task(int(r.task_id), r.prompt, response, r.category, feedback))
    source = {"kind": "label-studio", "annotation_rule": "latest"}
    project = ProjectRef(id=1, title=title, categories=CATEGORIES)
    return Pull(project=project, source=source, normalized=normalize_tasks(tasks, project_id=1))


def _snapshot(root: Path, pull: Pull, config: PipelineConfig) -> Path:
    fp = input_fingerprint(pull, config, BASE)
    prepared = prepare_dataset(pull, root, config, token_checks=False, input_fingerprint=fp)
    mark_feedback_delivered(prepared.snapshot.path, {"test": True})
    return prepared.snapshot.path


def test_same_input_reuses_the_newest_snapshot(tmp_path: Path) -> None:
    config, pull = PipelineConfig(), _pull()
    made = _snapshot(tmp_path, pull, config)
    again = unchanged_snapshot(tmp_path, input_fingerprint(_pull(), config, BASE))
    assert again is not None and again.path == made
    # The pipeline's own feedback in the task data changes the tasks in Label Studio, not what is validated.
    flagged = unchanged_snapshot(tmp_path, input_fingerprint(_pull(feedback="Fix the spacing."), config, BASE))
    assert flagged is not None and flagged.path == made


@pytest.mark.parametrize(
    "what",
    ["an edited answer", "project title", "config", "base model", "code"],
)
def test_anything_that_could_change_the_snapshot_prevents_reuse(
    what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, pull = PipelineConfig(), _pull()
    _snapshot(tmp_path, pull, config)
    base = BASE
    if what == "an edited answer":
        pull = _pull(edit=int(pull.normalized.records["task_id"].iloc[5]))
    elif what == "project title":
        pull = _pull(title="renamed")
    elif what == "config":
        config = config.model_copy(update={"data": config.data.model_copy(update={"eval_fraction": 0.2})})
    elif what == "base model":
        base = "local:fedcba98"
    else:
        real = unchanged._code_digest()
        monkeypatch.setattr(unchanged, "_code_digest", lambda: real + "-edited")
    assert unchanged_snapshot(tmp_path, input_fingerprint(pull, config, base)) is None


def test_no_reuse_without_delivered_feedback(tmp_path: Path) -> None:
    config, pull = PipelineConfig(), _pull()
    made = _snapshot(tmp_path, pull, config)
    (made / FEEDBACK_MARKER).unlink()  # the run that wrote it failed before the feedback reached Label Studio
    assert unchanged_snapshot(tmp_path, input_fingerprint(pull, config, BASE)) is None
    assert unchanged_snapshot(tmp_path, None) is None


def test_only_the_newest_snapshot_is_reused(tmp_path: Path) -> None:
    config, pull = PipelineConfig(), _pull()
    _snapshot(tmp_path, pull, config)
    _snapshot(tmp_path, _pull(edit=int(pull.normalized.records["task_id"].iloc[0])), config)  # newer, other input
    assert unchanged_snapshot(tmp_path, input_fingerprint(pull, config, BASE)) is None


def test_a_snapshot_without_a_fingerprint_is_never_reused(tmp_path: Path) -> None:
    config, pull = PipelineConfig(), _pull()
    prepared = prepare_dataset(pull, tmp_path, config, token_checks=False)
    mark_feedback_delivered(prepared.snapshot.path, {})
    assert prepared.snapshot.meta["input_fingerprint"] is None
    assert unchanged_snapshot(tmp_path, input_fingerprint(pull, config, BASE)) is None


def test_a_snapshot_whose_checks_failed_is_never_reused(tmp_path: Path) -> None:
    """Its run stopped on a failed `error` check: validating again stops the next run with the full report."""
    config, pull = PipelineConfig(), _pull()
    made = _snapshot(tmp_path, pull, config)
    meta_file = made / "snapshot.json"
    meta = json.loads(meta_file.read_text())
    meta["validation_errors"] = ["min_rows_per_category: tickets has 2 rows (< 5)"]
    meta_file.write_text(json.dumps(meta))
    assert unchanged_snapshot(tmp_path, input_fingerprint(pull, config, BASE)) is None
