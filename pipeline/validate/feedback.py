"""Feedback to annotators: tasks that failed a check are marked in Label Studio, where annotators work.

Label Studio 1.23 Community Edition has no comments API (`/api/comments/` answers 404; comments
are Enterprise-only). So each failing task gets:

- the task data field `pipeline_feedback` (labeling_config.FEEDBACK_FIELD): the check, the reason in
  plain words, how to fix it and the offending value with invisible characters shown as markers
  (visible_text.py). The labeling page shows it in the feedback panel above the prompt, and the
  Data Manager shows it as a column. Updating a task's data keeps its annotations.
- a machine-readable marker in `meta` (checks, reasons, fixes) for scripts;
- a saved Data Manager view, "needs fix" by default, whose filter (the field contains the panel's
  title) shows in the Filters button. A "Default" tab is created first when the project has no
  other tab, so the pipeline's view is never the only one.

Re-runs are idempotent: a task whose marker and field already say the same is not touched; tasks
that no longer fail have the field emptied and the marker removed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from label_studio_sdk import LabelStudio

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import connect, iter_task_fields, retry_policy
from pipeline.ingest.labeling_config import FEEDBACK_FIELD
from pipeline.ingest.records import NORMALIZE_HINTS
from pipeline.ingest.review_views import ensure_default_view
from pipeline.validate.visible_text import unpreview, visible
from schemas.pairs import FIX_HINTS

MARKER_KEY = "lora_pipeline_needs_fix"
# The panel's first line; the "needs fix" view filters on it, so it must stay in every feedback text.
PANEL_TITLE = "Pipeline feedback"
MARKER_LEGEND = "Markers: · space at an end or doubled, → tab, ↵ line break, ⟨ZWSP⟩ zero-width, ␀ control character"
# What a failed check means, in words an annotator reads without knowing the schema.
PLAIN_REASONS: dict[str, str] = {
    "not_empty": "is empty or holds only whitespace",
    "no_surrounding_whitespace": "starts or ends with spaces, tabs or blank lines",
    "no_doubled_whitespace": "has doubled spaces, tabs or more than one blank line in a row",
    "balanced_markup": "opens a <tag> or ``` code fence that it never closes",
    "known_markup_tags": "uses a markup tag the project does not allow",
    "no_template_placeholder": "still holds a template placeholder such as {name}, [INSERT ...] or TODO",
    "no_control_characters": "holds invisible control or zero-width characters",
    "no_mojibake": "holds broken-encoding characters such as 'Ã©' or '�'",
    "response_not_echo": "repeats the prompt instead of answering it",
    "within_max_length": "is longer than the model's maximum length",
    "response_min_tokens": "is too short to teach the model anything",
    "category_in_project_choices": "has a category that is not one of the project's choices",
    "script_matches_language": "is not written in the project's language",
    "not_nullable": "is missing",
    "no_duplicate_prompts": "has the same prompt as another task",
    "no_near_duplicate_prompts": "has almost the same prompt as another task",
}
# Data Manager columns the "needs fix" tab hides when created, so that the prompt and the reason fit on screen.
NEEDS_FIX_HIDDEN_COLUMNS = tuple(
    f"tasks:{c}"
    for c in (
        "inner_id", "cancelled_annotations", "total_predictions", "annotations_results", "annotations_ids",
        "predictions_score", "predictions_model_versions", "predictions_results", "file_upload",
        "storage_filename", "created_at", "updated_by", "avg_lead_time", "draft_exists", "allow_skip",
    )
)  # fmt: skip
_FAILED = re.compile(r"^(?P<field>[\w/]+): failed (?P<check>\w+)$")


@dataclass(frozen=True)
class FeedbackResult:
    """What one feedback pass changed in Label Studio."""

    marked: int  # tasks given a new or changed marker
    unchanged: int  # tasks already carrying the same marker
    cleared: int  # tasks that no longer fail and lost the marker
    view_id: int

    def as_dict(self) -> dict[str, int]:
        return {"marked": self.marked, "unchanged": self.unchanged, "cleared": self.cleared, "view_id": self.view_id}


def plain_reason(check: str, reason: str) -> str:
    """The reason a row failed, in words: "The response starts or ends with spaces ..." for a schema check."""
    m = _FAILED.match(reason)
    if m is not None and m.group("check") in PLAIN_REASONS:
        field = "text" if m.group("field") == "prompt/response" else m.group("field")
        return f"The {field} {PLAIN_REASONS[m.group('check')]}."
    return reason  # normalization and dataset checks already explain themselves


def markers(quarantined: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """The marker each quarantined task should carry: the checks it failed, why, how to fix them, the value."""
    hints = {**FIX_HINTS, **NORMALIZE_HINTS}
    out: dict[int, dict[str, Any]] = {}
    rows = quarantined.dropna(subset=["task_id"]).sort_values(["task_id", "check", "reason"])
    has_value = "value" in rows.columns
    for r in rows.itertuples(index=False):
        entry = out.setdefault(int(r.task_id), {"checks": [], "problems": []})
        if r.check in entry["checks"]:
            continue
        check = str(r.check)
        text = unpreview(r.value) if has_value else None
        value = visible(text) if text is not None else (None if not has_value or pd.isna(r.value) else str(r.value))
        entry["checks"].append(check)
        entry["problems"].append(
            {
                "check": check,
                "why": plain_reason(check, str(r.reason)),
                "fix": hints.get(check, "see schemas/pairs.py"),
                "value": value,
            }
        )
    return out


def panel_text(marker: dict[str, Any]) -> str:
    """The feedback panel's text for one task (the `pipeline_feedback` field): what failed, why, how to fix."""
    # The first line names the checks: the Data Manager's column shows only the first lines.
    checks = ", ".join(marker["checks"])
    lines = [f"⚠ {PANEL_TITLE}: {checks}. This task was left out of training; fix it and submit again."]
    for p in marker["problems"]:
        lines += ["", f"Check: {p['check']}", f"Why: {p['why']}", f"How to fix: {p['fix']}"]
        if p.get("value"):
            lines.append(f"Value: «{p['value']}»")
    lines += ["", MARKER_LEGEND]
    return "\n".join(lines)


def _query(*items: dict[str, Any], conjunction: str = "and") -> str:
    return json.dumps({"filters": {"conjunction": conjunction, "items": list(items)}})


def feedback_filter() -> dict[str, Any]:
    """The Data Manager filter item for tasks whose feedback field holds feedback (shown in the UI's Filters)."""
    return {
        "filter": f"filter:tasks:data.{FEEDBACK_FIELD}",
        "operator": "contains",
        "type": "Unknown",  # the type Label Studio gives data columns that are not in the labeling config
        "value": PANEL_TITLE,
    }


def flagged_tasks(client: LabelStudio, project_id: int) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """Tasks carrying our meta marker or feedback field now: id -> (meta, data)."""
    meta_item = {"filter": "filter:tasks:meta", "operator": "contains", "type": "String", "value": MARKER_KEY}
    query = _query(meta_item, feedback_filter(), conjunction="or")
    out: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for t in iter_task_fields(client, project_id, "id,meta,data", page_size=1000, query=query):
        meta = t.get("meta") if isinstance(t.get("meta"), dict) else {}
        data = t.get("data") if isinstance(t.get("data"), dict) else {}
        if MARKER_KEY in meta or data.get(FEEDBACK_FIELD):
            out[int(t["id"])] = (meta, data)
    return out


def marked_tasks(client: LabelStudio, project_id: int) -> dict[int, dict[str, Any]]:
    """Tasks that carry our meta marker now, with their whole meta."""
    return {tid: meta for tid, (meta, _) in flagged_tasks(client, project_id).items() if MARKER_KEY in meta}


def ensure_views(client: LabelStudio, project_id: int, title: str) -> int:
    """A "Default" tab (when the project has no tab but the pipeline's) and the view listing flagged tasks; its id.

    A view made by an earlier version (filtering on `meta`, whose filter the Data Manager did not
    show) gets the current filter.
    """
    views = [v for v in client.views.list(project=project_id) if isinstance(v.data, dict)]
    ours = [v for v in views if v.data.get("title") == title]
    ensure_default_view(client, project_id, views, pipeline_titles={title})
    filters = {"conjunction": "and", "items": [feedback_filter()]}
    hidden = {"explore": list(NEEDS_FIX_HIDDEN_COLUMNS), "labeling": list(NEEDS_FIX_HIDDEN_COLUMNS)}
    if ours:
        view = ours[0]
        if view.data.get("filters") != filters:
            # The columns someone chose stay; an old view that never had a choice gets ours.
            data = {"hiddenColumns": hidden, **view.data, "filters": filters}
            client.views.update(id=str(view.id), project=project_id, data=data)
        return int(view.id)
    view = client.views.create(project=project_id, data={"title": title, "filters": filters, "hiddenColumns": hidden})
    return int(view.id)


def send_feedback(
    client: LabelStudio, project_id: int, quarantined: pd.DataFrame, *, view_title: str = "needs fix"
) -> FeedbackResult:
    """Mark every quarantined task of the project, clear fixed ones, and make sure the views exist.

    A task's `data` is written whole (Label Studio replaces it), with only the feedback field changed;
    its annotations are kept.
    """
    wanted = markers(quarantined)
    current = flagged_tasks(client, project_id)
    marked = unchanged = cleared = 0
    for task_id, marker in wanted.items():
        text = panel_text(marker)
        if task_id in current:
            meta, data = current[task_id]
        else:
            task = client.tasks.get(id=task_id)
            meta = dict(task.meta) if isinstance(task.meta, dict) else {}
            data = dict(task.data) if isinstance(task.data, dict) else {}
        if meta.get(MARKER_KEY) == marker and data.get(FEEDBACK_FIELD) == text:
            unchanged += 1
            continue
        client.tasks.update(id=str(task_id), meta={**meta, MARKER_KEY: marker}, data={**data, FEEDBACK_FIELD: text})
        marked += 1
    for task_id, (meta, data) in current.items():
        if task_id not in wanted:
            # Emptied, not removed: the Data Manager keeps the column and the "needs fix" view its filter.
            client.tasks.update(
                id=str(task_id),
                meta={k: v for k, v in meta.items() if k != MARKER_KEY},
                data={**data, FEEDBACK_FIELD: ""},
            )
            cleared += 1
    view_id = ensure_views(client, project_id, view_title)
    return FeedbackResult(marked=marked, unchanged=unchanged, cleared=cleared, view_id=view_id)


def feedback_for_snapshot(
    settings: Settings, cfg: LabelStudioConfig, project_id: int, snapshot_dir: str | Path
) -> FeedbackResult:
    """Send the feedback of a written snapshot (its quarantine.parquet) to its Label Studio project."""
    policy = retry_policy(cfg)
    client = connect(
        settings.label_studio_url, settings.require_label_studio_key(), timeout_s=cfg.timeout_s, policy=policy
    )
    quarantined = pd.read_parquet(Path(snapshot_dir) / "quarantine.parquet")
    return send_feedback(client, project_id, quarantined, view_title=cfg.feedback_view)
