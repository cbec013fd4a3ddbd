"""Full and incremental task fetches from Label Studio, with a watermark kept in the snapshot metadata.

A full pull lists task ids (a few thousand per request), then fetches the tasks through the
export endpoint in chunks of `export_chunk_size` ids, `workers` requests at a time: each request
stays small (no 30 s single export behind a proxy) and the client holds only a window of chunks.

An incremental pull asks the tasks API for tasks whose `updated_at` is after the last watermark
(minus an overlap, so that late commits are not missed), checks the project's task count to see
whether any task was deleted (listing ids only then), and merges the changes into the previous
pull's task file. Both paths yield the same canonical task dicts in id order, so the normalized
result of an incremental pull equals that of a full pull (tests/test_ingest_incremental.py).
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from label_studio_sdk import LabelStudio

from pipeline.labelstudio.client import (
    export_tasks,
    list_task_stamps,
    project_task_count,
    task_id_bounds,
    updated_since_query,
)

TASKS_DIR = ".labelstudio-tasks"
_ANNOTATION_KEYS = ("id", "completed_by", "result", "was_cancelled", "ground_truth", "created_at", "updated_at")


def canonical_task(task: dict[str, Any]) -> dict[str, Any]:
    """The fields normalization reads, identical whether the task came from the tasks API or an export."""
    anns = task.get("annotations")
    drafts = task.get("drafts")
    return {
        "id": task.get("id"),
        "project": task.get("project"),
        "updated_at": task.get("updated_at"),
        "data": task.get("data"),
        "meta": task.get("meta") if isinstance(task.get("meta"), dict) else {},
        "annotations": [
            {k: a.get(k) for k in _ANNOTATION_KEYS} if isinstance(a, dict) else a
            for a in (anns if isinstance(anns, list) else [])
        ],
        # Only whether drafts exist matters (they never reach training).
        "drafts": [{"id": d.get("id") if isinstance(d, dict) else None} for d in (drafts or [])]
        if isinstance(drafts, list)
        else [],
    }


def _instant(value: object) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _later(a: str | None, b: object) -> str | None:
    if not isinstance(b, str):
        return a
    return b if a is None or _instant(b) > _instant(a) else a


@dataclass
class Watermark:
    """What the next incremental pull starts from; stored under `source.watermark` in snapshot.json."""

    updated_at: str | None
    task_ids: list[int]
    tasks_file: str  # under <snapshots_root>/.labelstudio-tasks/
    tasks_sha256: str
    overlap_s: float = 0.0
    # `updated_at` of the tasks inside the overlap window: those are re-listed but not re-fetched if unchanged.
    recent: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "updated_at": self.updated_at,
            "task_ids": self.task_ids,
            "tasks_file": self.tasks_file,
            "tasks_sha256": self.tasks_sha256,
            "overlap_s": self.overlap_s,
            "recent": self.recent,
        }

    def since(self) -> str | None:
        """The lower bound of the next server-side filter: the watermark minus the overlap."""
        if self.updated_at is None:
            return None
        return (_instant(self.updated_at) - timedelta(seconds=self.overlap_s)).isoformat().replace("+00:00", "Z")


def previous_watermark(snapshots_root: Path, url: str, project_id: int) -> Watermark | None:
    """The watermark of the newest snapshot of this project whose task file is still intact."""
    if not snapshots_root.is_dir():
        return None
    for snap in sorted((p for p in snapshots_root.iterdir() if not p.name.startswith(".")), reverse=True):
        meta_file = snap / "snapshot.json"
        if not meta_file.is_file():
            continue
        source = json.loads(meta_file.read_text()).get("source") or {}
        if source.get("url") != url or source.get("project_id") != project_id:
            continue
        wm = source.get("watermark")
        if not wm:
            return None
        mark = Watermark(**wm)
        path = snapshots_root / TASKS_DIR / mark.tasks_file
        if not path.is_file() or _file_sha256(path) != mark.tasks_sha256:
            return None  # gone or damaged: the caller falls back to a full pull
        return mark
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for line in f:
            h.update(line)
    return h.hexdigest()


def read_tasks_file(path: Path) -> Iterator[dict[str, Any]]:
    """Canonical tasks of an earlier pull, one JSON object per line, in id order."""
    with gzip.open(path, "rb") as f:
        for line in f:
            yield orjson.loads(line)


def _task_line(task: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(task, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # Lone surrogates in bad task data: the stdlib escapes them as \ud800, which stays storable.
        return (json.dumps(task, ensure_ascii=True, sort_keys=True) + "\n").encode()


@dataclass
class TaskFileWriter:
    """Writes the canonical tasks of this pull as they stream past; content-addressed, renamed into place."""

    root: Path
    project_id: int
    overlap_s: float = 0.0
    updated_at: str | None = None
    task_ids: list[int] = field(default_factory=list)
    stamps: list[str | None] = field(default_factory=list)
    _hash: Any = field(default_factory=hashlib.sha256)

    def wrap(self, tasks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wb", compresslevel=1) as out:
                for task in tasks:
                    line = _task_line(task)
                    out.write(line)
                    self._hash.update(line)
                    self.task_ids.append(task["id"])
                    self.stamps.append(task.get("updated_at") if isinstance(task.get("updated_at"), str) else None)
                    self.updated_at = _later(self.updated_at, task.get("updated_at"))
                    yield task
            digest = self._hash.hexdigest()
            name = f"project-{self.project_id}-{digest[:16]}.jsonl.gz"
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        mark = Watermark(self.updated_at, self.task_ids, name, digest, self.overlap_s)
        since = mark.since()
        if since is not None:
            floor = _instant(since)
            mark.recent = {
                str(i): ts for i, ts in zip(self.task_ids, self.stamps, strict=True) if ts and _instant(ts) > floor
            }
        self.watermark = mark


def _by_id(tasks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((canonical_task(t) for t in tasks), key=lambda t: t["id"])


def fetch_all(
    client: LabelStudio, project_id: int, *, chunk_size: int, workers: int, id_page_size: int = 5000
) -> Iterator[dict[str, Any]]:
    """Every task, canonical, in id order, fetched as export chunks `workers` at a time.

    Ids of a project are usually dense, so chunks are plain id ranges between its lowest and highest id
    (ids of other projects are filtered out by the server); a sparse project has its ids listed first.
    """
    low, high, total = task_id_bounds(client, project_id)
    if high - low + 1 <= 2 * total:
        ids = list(range(low, high + 1))
    else:
        ids = sorted(list_task_stamps(client, project_id, page_size=id_page_size))
    chunks = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # A bounded window of requests in flight: memory stays O(workers x chunk) whatever the project size.
        window: deque[Future[list[dict[str, Any]]]] = deque()
        for chunk in chunks:
            window.append(pool.submit(export_tasks, client, project_id, chunk))
            if len(window) > workers:
                yield from _by_id(window.popleft().result())
        while window:
            yield from _by_id(window.popleft().result())


@dataclass(frozen=True)
class IncrementalPlan:
    """What changed on the server since the watermark."""

    changed: dict[int, dict[str, Any]]
    deleted: set[int]


def plan_incremental(client: LabelStudio, project_id: int, mark: Watermark, *, chunk_size: int) -> IncrementalPlan:
    """Tasks updated since the watermark (server-side filter) and tasks deleted since (id sets)."""
    # Count first: a task created after the count shows up as updated and forces the id listing below.
    count = project_task_count(client, project_id)
    since = mark.since()
    updated: dict[int, str] = {}
    if since is not None:
        # Ids and stamps only; tasks in the overlap window whose stamp we already hold are not re-fetched.
        updated = list_task_stamps(client, project_id, query=updated_since_query(since))
    previous = set(mark.task_ids)
    deleted: set[int] = set()
    if since is None or count != len(previous | set(updated)):
        current = list_task_stamps(client, project_id)
        deleted = previous - set(current)
        updated.update({i: ts for i, ts in current.items() if i not in previous})
    fetch = sorted(i for i, ts in updated.items() if mark.recent.get(str(i)) != ts)
    changed: dict[int, dict[str, Any]] = {}
    for start in range(0, len(fetch), chunk_size):
        for t in export_tasks(client, project_id, fetch[start : start + chunk_size]):
            changed[int(t["id"])] = canonical_task(t)
    return IncrementalPlan(changed=changed, deleted=deleted)


def merge(previous: Iterable[dict[str, Any]], plan: IncrementalPlan) -> Iterator[dict[str, Any]]:
    """The previous pull's tasks with deletions dropped and changes applied, in id order."""
    kept = (t for t in previous if t["id"] not in plan.deleted and t["id"] not in plan.changed)
    changed = sorted(plan.changed.values(), key=lambda t: t["id"])
    return heapq.merge(kept, changed, key=lambda t: t["id"])
