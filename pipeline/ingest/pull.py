"""One pull of a project: connect -> full or incremental fetch -> per-task outcomes -> PairRecords, plus the new
watermark. `pull_project` is the ingest stage's entry."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import (
    LabelStudioError,
    LabelStudioUnavailable,
    ProjectRef,
    connect,
    ensure_project,
    get_project,
    retry_policy,
)
from pipeline.ingest.incremental import (
    Changes,
    Watermark,
    fetch_all,
    fetch_tasks,
    ids_to_fetch,
    kept_tasks,
    list_changes,
    overlap_floor,
    previous_watermark,
    updated_after,
)
from pipeline.ingest.overlap import annotation_frame
from pipeline.ingest.records import NormalizedTasks, OutcomeCollector
from pipeline.ingest.task_store import STORE_DIR, StoredTask, StoreWriter, read_store, stored_task


@dataclass(frozen=True)
class Pull:
    """One pull of a project: the project and its normalized tasks."""

    project: ProjectRef
    source: dict[str, Any]
    normalized: NormalizedTasks
    # Every annotator's answer per task (pipeline/ingest/overlap.py), for agreement; None: not collected.
    annotations: pd.DataFrame | None = None


@dataclass(frozen=True)
class PulledTasks:
    """Normalized tasks and what the snapshot metadata records about how they were fetched."""

    normalized: NormalizedTasks
    source: dict[str, Any]
    annotations: pd.DataFrame | None = None


def pull_tasks(
    client: LabelStudio,
    url: str,
    project_id: int,
    cfg: LabelStudioConfig,
    *,
    snapshots_root: str | Path | None,
    full: bool = False,
) -> PulledTasks:
    """Fetch (incrementally when a watermark exists and `full` is False) and normalize every task of a project.

    An incremental pull normalizes only the tasks that changed and reuses the stored outcomes of the
    others; `source["tasks_normalized"]` counts the tasks normalized by this pull. Transient HTTP
    failures are retried by the client's transport; what still fails becomes a `LabelStudioError`
    naming the project and URL, and nothing of this pull is left behind.
    """
    started = time.perf_counter()
    root = Path(snapshots_root) if snapshots_root is not None else None
    mark = None
    if root is not None and cfg.incremental and not full:
        mark = previous_watermark(root, url, project_id, cfg.annotation_rule)
    # Without a snapshots root (ad-hoc pulls) the task store goes to a throwaway directory.
    store_dir = (root / STORE_DIR) if root is not None else Path(_scratch_dir()) / STORE_DIR
    collector = OutcomeCollector()
    normalized_here = 0
    ann_tasks: list[int] = []
    ann_rows: list[list[Any]] = []

    def fresh(tasks: Iterable[dict[str, Any]]) -> Iterator[StoredTask]:
        nonlocal normalized_here
        for task in tasks:
            normalized_here += 1
            yield stored_task(task, project_id=project_id, rule=cfg.annotation_rule)

    recent: dict[str, str] = {}
    without_annotations: dict[str, list[int]] = {"no_annotation": [], "only_drafts": []}
    try:
        # The server's clock before anything is fetched is the next pull's watermark.
        changes = None
        if mark is None:
            state, ids = ids_to_fetch(client, project_id)
            tasks = fresh(fetch_all(client, project_id, ids, chunk_size=cfg.export_chunk_size, workers=cfg.workers))
        else:
            state, changes = list_changes(client, project_id, mark)
            tasks = _changed_and_kept(client, project_id, store_dir / mark.tasks_file, changes, cfg, fresh)
        floor = overlap_floor(state.server_time, cfg.watermark_overlap_s) if state.server_time else None
        with StoreWriter(store_dir, project_id) as store:
            for item in tasks:
                store.write(item)
                collector.add(item.outcome)
                ann_tasks += [item.id] * len(item.annotations)
                ann_rows += item.annotations
                if item.outcome.kind == "unusable" and item.outcome.row["reason"] in without_annotations:
                    without_annotations[item.outcome.row["reason"]].append(item.id)
                if floor is not None and item.stamp is not None and updated_after(item.stamp, floor):
                    recent[str(item.id)] = item.stamp
    except (httpx.HTTPError, ApiError) as e:
        transient = not isinstance(e, ApiError) or e.status_code is None or e.status_code >= 500
        raise (LabelStudioUnavailable if transient else LabelStudioError)(
            f"pulling Label Studio project {project_id} from {url} failed after {cfg.retries} retries per "
            f"request ({type(e).__name__}: {str(e)[:200]}); the previous snapshot is untouched, run the pull again"
        ) from e
    source = {
        "kind": "label-studio",
        "url": url,
        "project_id": project_id,
        "mode": "full" if mark is None else "incremental",
        # Tasks fetched again because they changed (or were created) since the watermark, and deleted since.
        "tasks_changed": None if changes is None else normalized_here,
        "tasks_deleted": None if changes is None else len(changes.deleted),
        # Of the changed tasks, those fetched only because their drafts appeared or went.
        "tasks_drafts_changed": None if changes is None else changes.drafts_changed,
        "listed_all_ids": None if changes is None else changes.listed_all_ids,
        "tasks_normalized": normalized_here,
        "annotation_rule": cfg.annotation_rule,
        "pull_seconds": round(time.perf_counter() - started, 3),
        "watermark": _watermark(store, state.server_time, recent, without_annotations, cfg),
    }
    annotations = annotation_frame(ann_tasks, ann_rows).sort_values("task_id", kind="stable", ignore_index=True)
    return PulledTasks(normalized=collector.result(sort_by_task_id=True), source=source, annotations=annotations)


def _changed_and_kept(
    client: LabelStudio,
    project_id: int,
    previous_store: Path,
    changes: Changes,
    cfg: LabelStudioConfig,
    normalize: Callable[[Iterable[dict[str, Any]]], Iterator[StoredTask]],
) -> Iterator[StoredTask]:
    """The stored tasks that did not change, then the changed ones fetched and normalized anew."""
    fetched = fetch_tasks(client, project_id, changes.fetch, chunk_size=cfg.export_chunk_size)
    yield from kept_tasks(read_store(previous_store), changes)
    yield from normalize(fetched)


def _watermark(
    store: StoreWriter,
    as_of: datetime | None,
    recent: dict[str, str],
    without_annotations: dict[str, list[int]],
    cfg: LabelStudioConfig,
) -> dict[str, Any] | None:
    if as_of is None:
        return None  # the server sent no Date header: without its clock, the next pull is a full one
    assert store.name is not None and store.sha256 is not None
    return Watermark(
        as_of=as_of.isoformat().replace("+00:00", "Z"),
        task_ids=store.task_ids,
        tasks_file=store.name,
        tasks_sha256=store.sha256,
        annotation_rule=cfg.annotation_rule,
        overlap_s=cfg.watermark_overlap_s,
        recent=recent,
        no_annotation=without_annotations["no_annotation"],
        only_drafts=without_annotations["only_drafts"],
    ).as_dict()


def _scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="lora-pipeline-pull-")


def pull_project(
    settings: Settings, cfg: LabelStudioConfig, *, snapshots_root: str | Path | None = None, full: bool = False
) -> Pull:
    """Connect, resolve the project (by id, else by title, creating it if missing) and pull every task.

    With `snapshots_root` the pull is incremental from the newest snapshot's watermark (unless
    `full` or `cfg.incremental` is off); see pipeline/ingest/incremental.py.
    """
    policy = retry_policy(cfg)
    client = connect(
        settings.label_studio_url, settings.require_label_studio_key(), timeout_s=cfg.timeout_s, policy=policy
    )
    if cfg.project_id is not None:
        project = get_project(client, cfg.project_id)
    else:
        project = ensure_project(client, cfg.project_title, cfg.categories)
    # Only the URL and ids: the API key never enters metadata, logs or artifacts.
    pulled = pull_tasks(client, settings.label_studio_url, project.id, cfg, snapshots_root=snapshots_root, full=full)
    return Pull(project=project, source=pulled.source, normalized=pulled.normalized, annotations=pulled.annotations)


def pull_summary(pull: Pull) -> str:
    """One line on what a pull fetched, with only the counts its mode has (no `None`s)."""
    src = pull.source
    where = src.get("url") or src.get("path") or "?"
    line = (
        f"{src.get('mode', 'file')} pull of {where} project {pull.project.id} ({pull.project.title}): "
        f"{pull.normalized.tasks_seen} tasks"
    )
    if src.get("mode") == "incremental":
        reused = pull.normalized.tasks_seen - int(src.get("tasks_normalized", 0))
        drafts = f" ({src['tasks_drafts_changed']} only in their drafts)" if src.get("tasks_drafts_changed") else ""
        line += (
            f"; {src.get('tasks_changed', 0)} changed{drafts}, {src.get('tasks_deleted', 0)} deleted, "
            f"{reused} reused from the last pull"
        )
    return line
