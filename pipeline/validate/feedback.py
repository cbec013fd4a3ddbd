"""Feedback to annotators: tasks that failed a check are marked in Label Studio, where annotators work.

Label Studio 1.23 Community Edition has no comments API (`/api/comments/` answers 404; comments
are Enterprise-only), so the marker is a key in the task's `meta` (shown in the Data Manager's
Meta column) plus a saved Data Manager view, "needs fix" by default, filtering on that key.
Re-runs are idempotent: a task whose marker already says the same is not touched; tasks that
no longer fail lose the marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from label_studio_sdk import LabelStudio

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import connect, iter_task_fields, retry_policy, task_filter
from pipeline.ingest.records import NORMALIZE_HINTS
from schemas.pairs import FIX_HINTS

MARKER_KEY = "lora_pipeline_needs_fix"


@dataclass(frozen=True)
class FeedbackResult:
    """What one feedback pass changed in Label Studio."""

    marked: int  # tasks given a new or changed marker
    unchanged: int  # tasks already carrying the same marker
    cleared: int  # tasks that no longer fail and lost the marker
    view_id: int

    def as_dict(self) -> dict[str, int]:
        return {"marked": self.marked, "unchanged": self.unchanged, "cleared": self.cleared, "view_id": self.view_id}


def markers(quarantined: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """The marker each quarantined task should carry: the checks it failed, why, and how to fix them."""
    hints = {**FIX_HINTS, **NORMALIZE_HINTS}
    out: dict[int, dict[str, Any]] = {}
    rows = quarantined.dropna(subset=["task_id"]).sort_values(["task_id", "check", "reason"])
    for r in rows.itertuples(index=False):
        entry = out.setdefault(int(r.task_id), {"checks": [], "problems": []})
        if r.check in entry["checks"]:
            continue
        entry["checks"].append(str(r.check))
        entry["problems"].append(
            {"check": str(r.check), "why": str(r.reason), "fix": hints.get(str(r.check), "see schemas/pairs.py")}
        )
    return out


def marked_tasks(client: LabelStudio, project_id: int) -> dict[int, dict[str, Any]]:
    """Tasks that carry our marker now, with their whole meta."""
    query = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:meta", "operator": "contains", "type": "String", "value": MARKER_KEY}
                ],
            }
        }
    )
    out: dict[int, dict[str, Any]] = {}
    for t in iter_task_fields(client, project_id, "id,meta", page_size=1000, query=query):
        meta = t.get("meta") if isinstance(t.get("meta"), dict) else {}
        if MARKER_KEY in meta:
            out[int(t["id"])] = meta
    return out


def ensure_view(client: LabelStudio, project_id: int, title: str) -> int:
    """The saved view listing marked tasks, created once."""
    for v in client.views.list(project=project_id):
        if isinstance(v.data, dict) and v.data.get("title") == title:
            return int(v.id)
    view = client.views.create(
        project=project_id, data={"title": title, "filters": task_filter("meta", "contains", "String", MARKER_KEY)}
    )
    return int(view.id)


def send_feedback(
    client: LabelStudio, project_id: int, quarantined: pd.DataFrame, *, view_title: str = "needs fix"
) -> FeedbackResult:
    """Mark every quarantined task of the project, clear fixed ones, and make sure the view exists."""
    wanted = markers(quarantined)
    current = marked_tasks(client, project_id)
    marked = unchanged = cleared = 0
    for task_id, marker in wanted.items():
        meta = current.get(task_id)
        if meta is not None and meta.get(MARKER_KEY) == marker:
            unchanged += 1
            continue
        if meta is None:
            task = client.tasks.get(id=task_id)
            meta = dict(task.meta) if isinstance(task.meta, dict) else {}
        client.tasks.update(id=str(task_id), meta={**meta, MARKER_KEY: marker})
        marked += 1
    for task_id, meta in current.items():
        if task_id not in wanted:
            client.tasks.update(id=str(task_id), meta={k: v for k, v in meta.items() if k != MARKER_KEY})
            cleared += 1
    view_id = ensure_view(client, project_id, view_title)
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
