"""One pull of a project: full or incremental fetch -> canonical tasks -> PairRecords, plus the new watermark."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.config import LabelStudioConfig
from pipeline.incremental import (
    TASKS_DIR,
    TaskFileWriter,
    fetch_all,
    merge,
    plan_incremental,
    previous_watermark,
    read_tasks_file,
)
from pipeline.labelstudio.client import LabelStudioError
from pipeline.records import NormalizedTasks, normalize_tasks


@dataclass(frozen=True)
class PulledTasks:
    """Normalized tasks and what the snapshot metadata records about how they were fetched."""

    normalized: NormalizedTasks
    source: dict[str, Any]


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

    Transient HTTP failures are retried by the client's transport; what still fails becomes a
    `LabelStudioError` naming the project and URL, and nothing of this pull is left behind.
    """
    started = time.perf_counter()
    root = Path(snapshots_root) if snapshots_root is not None else None
    mark = None
    if root is not None and cfg.incremental and not full:
        mark = previous_watermark(root, url, project_id)
    # Without a snapshots root (ad-hoc pulls) the task file goes to a throwaway directory.
    files = (root / TASKS_DIR) if root is not None else Path(_scratch_dir()) / TASKS_DIR
    writer = TaskFileWriter(files, project_id, overlap_s=cfg.watermark_overlap_s)
    try:
        if mark is None:
            tasks = fetch_all(client, project_id, chunk_size=cfg.export_chunk_size, workers=cfg.workers)
            changed, deleted = None, None
        else:
            plan = plan_incremental(client, project_id, mark, chunk_size=cfg.export_chunk_size)
            tasks = merge(read_tasks_file(files / mark.tasks_file), plan)
            changed, deleted = len(plan.changed), len(plan.deleted)
        normalized = normalize_tasks(writer.wrap(tasks), project_id=project_id, rule=cfg.annotation_rule)
    except (httpx.HTTPError, ApiError) as e:
        raise LabelStudioError(
            f"pulling Label Studio project {project_id} from {url} failed after {cfg.retries} retries per "
            f"request ({type(e).__name__}: {str(e)[:200]}); the previous snapshot is untouched, run the pull again"
        ) from e
    source = {
        "kind": "label-studio",
        "url": url,
        "project_id": project_id,
        "mode": "full" if mark is None else "incremental",
        "tasks_changed": changed,
        "tasks_deleted": deleted,
        "annotation_rule": cfg.annotation_rule,
        "pull_seconds": round(time.perf_counter() - started, 3),
        "watermark": writer.watermark.as_dict(),
    }
    return PulledTasks(normalized=normalized, source=source)


def _scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="lora-pipeline-pull-")
