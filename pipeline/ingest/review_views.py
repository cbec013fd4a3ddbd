"""Data Manager tabs for reviewers: the "disagreements" view lists the tasks whose annotators disagree.

Label Studio Community has no agreement features (Enterprise only), so the pipeline measures agreement
(pipeline/validate/agreement/) and keeps one saved view whose filter names exactly the disagreeing task ids.
Each pull replaces that filter: one tab, never a second one. The filter is on the task ID column:
- up to `READABLE_MAX_IDS` tasks, one "ID = n" line per task joined by "or", which the Data Manager's filter
  panel shows as it is (a reviewer sees which tasks are listed, and why the tab holds them);
- beyond that, a single `in_list` item (Label Studio's list filter, exact for any count; a long "or" chain would
  also exceed SQLite's expression depth of 1,000);
- no task: a filter no task matches (ID = 0), never an empty filter (which would list every task).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from label_studio_sdk import LabelStudio

DISAGREEMENTS_VIEW = "disagreements"
DEFAULT_VIEW = "Default"
READABLE_MAX_IDS = 200


@dataclass(frozen=True)
class ReviewView:
    """The view after an update: its id, the tasks it lists, and whether it was created by this update."""

    view_id: int
    task_ids: tuple[int, ...]
    created: bool


def task_ids_filter(task_ids: Iterable[int]) -> dict[str, Any]:
    """A Data Manager `filters` object matching exactly these task ids (see the module docstring)."""
    ids = sorted({int(t) for t in task_ids})
    if not ids:
        ids = [0]  # Label Studio task ids start at 1: matches nothing
    if len(ids) <= READABLE_MAX_IDS:
        items = [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": t} for t in ids]
        return {"conjunction": "or", "items": items}
    item = {"filter": "filter:tasks:id", "operator": "in_list", "type": "List", "value": ids}
    return {"conjunction": "and", "items": [item]}


def ensure_default_view(
    client: LabelStudio, project_id: int, views: Iterable[Any], *, pipeline_titles: Iterable[str]
) -> None:
    """Create a "Default" tab (no filter) when the project has no tab but the pipeline's (or none): the first tab
    the Data Manager finds becomes the one a project opens on, and it should list every task."""
    pipeline = {*pipeline_titles, DISAGREEMENTS_VIEW}
    if all(v.data.get("title") in pipeline for v in views):
        client.views.create(project=project_id, data={"title": DEFAULT_VIEW})


def update_task_view(
    client: LabelStudio, project_id: int, title: str, task_ids: Iterable[int], *, create: bool = True
) -> ReviewView | None:
    """Create the view `title` (unless `create` is False: then None), or replace its filter, so that it lists
    exactly `task_ids`; a new view comes after a "Default" tab when the project has none (`ensure_default_view`).
    """
    ids = tuple(sorted({int(t) for t in task_ids}))
    views = [v for v in client.views.list(project=project_id) if isinstance(v.data, dict)]
    mine = [v for v in views if v.data.get("title") == title]
    filters = task_ids_filter(ids)
    if not mine:
        if not create:
            return None
        ensure_default_view(client, project_id, views, pipeline_titles={title})
        view = client.views.create(project=project_id, data={"title": title, "filters": filters})
        return ReviewView(view_id=int(view.id), task_ids=ids, created=True)
    view = mine[0]
    client.views.update(id=str(view.id), project=project_id, data={**view.data, "title": title, "filters": filters})
    return ReviewView(view_id=int(view.id), task_ids=ids, created=False)


def update_disagreements_view(
    client: LabelStudio, project_id: int, task_ids: Iterable[int] | None, *, title: str = DISAGREEMENTS_VIEW
) -> ReviewView | None:
    """The "disagreements" tab lists exactly these tasks (those whose annotators disagree, from this pull).

    `task_ids=None` (no task has two or more annotators): an existing tab is emptied, none is created.
    """
    return update_task_view(client, project_id, title, task_ids or (), create=task_ids is not None)
