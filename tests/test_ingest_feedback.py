"""Against a real Label Studio server: failing tasks are marked where annotators work, once, and unmarked when fixed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from label_studio_sdk import LabelStudio

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import ensure_project, import_tasks, raw_get, submit_annotation
from pipeline.ingest.labeling_config import FEEDBACK_FIELD
from pipeline.ingest.pull import pull_project
from pipeline.validate.feedback import MARKER_KEY, FeedbackResult, marked_tasks, panel_text, send_feedback
from pipeline.validate.prepare import prepare_dataset

pytestmark = pytest.mark.slow
CATS = ("billing", "shipping")


def test_feedback_marks_failing_tasks_once_and_clears_fixed_ones(ls_client: LabelStudio, tmp_path: Path) -> None:
    """Two failing tasks get a marker and the "needs fix" view lists them; re-runs write nothing new."""
    client = ls_client
    project = ensure_project(client, "feedback-test", CATS)
    ok, spaced, blank, fine = import_tasks(
        client, project.id, [{"prompt": "Refund?"}, {"prompt": "Parcel?"}, {"prompt": "Hours?"}, {"prompt": "Fee?"}]
    )
    submit_annotation(client, ok, "Five days.", "billing")
    submit_annotation(client, spaced, "It ships today. ", "shipping")
    submit_annotation(client, blank, "   ", "billing")
    submit_annotation(client, fine, "Two euros.", "billing")
    client.tasks.update(id=str(fine), meta={"batch": "march"})  # someone else's meta survives our marker
    cfg = LabelStudioConfig(project_title="feedback-test", categories=CATS)
    root = tmp_path / "snapshots"

    def run() -> FeedbackResult:
        prepared = prepare_dataset(pull_project(Settings(), cfg, snapshots_root=root), root)
        quarantine = pd.read_parquet(prepared.snapshot.path / "quarantine.parquet")
        return send_feedback(client, project.id, quarantine, view_title="needs fix")

    first = run()
    assert (first.marked, first.unchanged, first.cleared) == (2, 0, 0)
    marked = marked_tasks(client, project.id)
    assert set(marked) == {spaced, blank}
    assert marked[spaced][MARKER_KEY]["checks"] == ["no_surrounding_whitespace"]
    problem = marked[spaced][MARKER_KEY]["problems"][0]
    assert "remove the spaces" in problem["fix"] and problem["why"]
    # The field the labeling page's panel shows says the same, with the trailing space made visible.
    panel = client.tasks.get(id=spaced).data[FEEDBACK_FIELD]
    assert "Check: no_surrounding_whitespace" in panel and "«It ships today.·»" in panel
    # A Default tab first, then the saved view listing exactly the marked tasks.
    views = sorted(client.views.list(project=project.id), key=lambda v: v.id)
    assert [v.data.get("title") for v in views] == ["Default", "needs fix"] and views[1].id == first.view_id
    listed = raw_get(client, "/api/tasks", {"view": first.view_id, "fields": "task_only", "page_size": 100})
    assert {t["id"] for t in listed["tasks"]} == {spaced, blank}

    second = run()  # nothing changed: nothing written, no second view
    assert (second.marked, second.unchanged, second.cleared) == (0, 2, 0)
    assert len([v for v in client.views.list(project=project.id) if v.data.get("title") == "needs fix"]) == 1

    # The annotator fixes one task and a task with other meta starts failing: marker moves, other meta stays.
    submit_annotation(client, spaced, "It ships today.", "shipping")
    submit_annotation(client, fine, " Two euros.", "billing")
    third = run()
    assert (third.marked, third.unchanged, third.cleared) == (1, 1, 1)
    marked = marked_tasks(client, project.id)
    assert set(marked) == {blank, fine} and marked[fine]["batch"] == "march"
    assert MARKER_KEY not in (client.tasks.get(id=spaced).meta or {})
    assert client.tasks.get(id=spaced).data[FEEDBACK_FIELD] == ""
    assert client.tasks.get(id=fine).data == {"prompt": "Fee?", FEEDBACK_FIELD: panel_text(marked[fine][MARKER_KEY])}
