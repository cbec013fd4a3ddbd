"""Full and incremental task fetches from Label Studio, with a watermark kept in the snapshot metadata.

A full pull fetches the tasks through the export endpoint in chunks of `export_chunk_size` ids
(id ranges between the project's lowest and highest id), `workers` requests at a time: each request
stays small (no 30 s single export behind a proxy) and the client holds only a window of chunks.

The watermark is the server's clock (its `Date` header) when a pull started, with the task ids and
the pull's task store (pipeline/ingest/task_store.py). An incremental pull asks the tasks API
for tasks whose `updated_at` is after the watermark minus an overlap (for transactions that commit
late), checks the project's task count to see whether any task was deleted (listing every id only
then), fetches and normalizes only the changed tasks, and copies the stored outcomes of all others.
Both paths produce the same outcomes in id order, so an incremental pull's result equals a full
pull's (tests/test_ingest_incremental.py).

Why the pull's start and not the newest `updated_at` seen: a task edited during a long full pull,
after its chunk was fetched, has an `updated_at` after the start but maybe well before the newest
stamp seen; starting the next pull from the start time cannot miss it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from label_studio_sdk import LabelStudio

from pipeline.ingest.client import (
    LabelStudioError,
    ProjectState,
    draft_exists_query,
    export_ids_per_request,
    export_tasks,
    list_task_ids,
    list_task_stamps,
    newest_task_stamps,
    task_id_bounds,
    updated_since_query,
)
from pipeline.ingest.task_checks import preview, valid_id
from pipeline.ingest.task_store import STORE_DIR, STORE_FORMAT, StoredTask, file_sha256

_ANNOTATION_KEYS = ("id", "completed_by", "result", "was_cancelled", "ground_truth", "created_at", "updated_at")


def canonical_task(task: dict[str, Any]) -> dict[str, Any]:
    """The fields normalization reads, identical whether the task came from the tasks API or an export.

    Malformed values are kept as they are (a non-list `annotations`, a non-object annotation), so that
    normalization quarantines them with a reason instead of reading them as "no annotations".
    """
    anns = task.get("annotations")
    drafts = task.get("drafts")
    return {
        "id": task.get("id"),
        "project": task.get("project"),
        "updated_at": task.get("updated_at"),
        "data": task.get("data"),
        "meta": task.get("meta") if isinstance(task.get("meta"), dict) else {},
        "annotations": [{k: a.get(k) for k in _ANNOTATION_KEYS} if isinstance(a, dict) else a for a in anns]
        if isinstance(anns, list)
        else anns,
        # Only whether drafts exist matters (they never reach training).
        "drafts": [{"id": d.get("id") if isinstance(d, dict) else None} for d in (drafts or [])]
        if isinstance(drafts, list)
        else [],
    }


def _instant(value: object) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class Watermark:
    """What the next incremental pull starts from; stored under `source.watermark` in snapshot.json."""

    as_of: str  # the server's clock when the pull started (ISO 8601, UTC)
    task_ids: list[int]
    tasks_file: str  # the pull's task store, under <snapshots_root>/.labelstudio-tasks/
    tasks_sha256: str
    annotation_rule: str  # stored outcomes hold only for the rule they were normalized with
    overlap_s: float = 0.0
    # `updated_at` of the tasks inside the overlap window: those are re-listed but not re-fetched if unchanged.
    recent: dict[str, str] = field(default_factory=dict)
    # Tasks without any annotation, by stored reason. Saving a draft does not move a task's `updated_at`,
    # so the next pull compares these with the server's "has drafts" filter to catch a draft saved or removed.
    no_annotation: list[int] = field(default_factory=list)
    only_drafts: list[int] = field(default_factory=list)
    store_format: int = STORE_FORMAT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def since(self) -> str:
        """The lower bound of the next server-side filter: the watermark minus the overlap."""
        return (_instant(self.as_of) - timedelta(seconds=self.overlap_s)).isoformat().replace("+00:00", "Z")


def previous_watermark(snapshots_root: Path, url: str, project_id: int, rule: str) -> Watermark | None:
    """The watermark of the newest snapshot of this project, if its task store is intact and reusable."""
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
        # An older store format, another annotation rule, or a pull without a server clock: pull in full.
        if not wm or wm.get("store_format") != STORE_FORMAT or wm.get("annotation_rule") != rule:
            return None
        mark = Watermark(**wm)
        path = snapshots_root / STORE_DIR / mark.tasks_file
        if not path.is_file() or file_sha256(path) != mark.tasks_sha256:
            return None  # gone or damaged: the caller falls back to a full pull
        return mark
    return None


def overlap_floor(as_of: datetime, overlap_s: float) -> datetime:
    """Where the next pull's overlap window starts: tasks updated after it are re-listed next time."""
    return as_of - timedelta(seconds=overlap_s)


def updated_after(stamp: str, floor: datetime) -> bool:
    """Whether a task's `updated_at` is after `floor` (an unreadable or out-of-range stamp is not)."""
    try:
        return _instant(stamp) > floor
    except (ValueError, OverflowError):  # OverflowError: a stamp at the calendar's edge moved to UTC
        return False


def _by_id(tasks: Iterable[Any]) -> list[dict[str, Any]]:
    """Tasks of an export answer, canonical, in id order; a task without a valid id is a server error."""
    canonical = []
    for position, task in enumerate(tasks):
        if not isinstance(task, dict) or not valid_id(task.get("id")):
            what = "is not an object" if not isinstance(task, dict) else f"has id {preview(task.get('id'))}"
            raise LabelStudioError(f"Label Studio's export answer: task #{position + 1} {what}, not an integer id")
        canonical.append(canonical_task(task))
    return sorted(canonical, key=lambda t: t["id"])


def ids_to_fetch(
    client: LabelStudio, project_id: int, *, id_page_size: int = 5000
) -> tuple[ProjectState, Sequence[int]]:
    """The project's state and the task ids a full pull asks for.

    Ids of a project are usually dense, so they are the range between its lowest and highest id (ids of
    other projects are filtered out by the server); a sparse project has its ids listed.
    """
    low, high, state = task_id_bounds(client, project_id)
    if high - low + 1 <= 2 * state.task_count:
        return state, range(low, high + 1)
    return state, sorted(list_task_stamps(client, project_id, page_size=id_page_size))


def fetch_all(
    client: LabelStudio, project_id: int, ids: Sequence[int], *, chunk_size: int, workers: int
) -> Iterator[dict[str, Any]]:
    """The tasks with these ids (those that exist), canonical, in id order, as export chunks `workers` at a time.

    Chunks hold at most `chunk_size` ids and are of equal size, their number a multiple of `workers`, so
    that the last requests in flight finish together instead of one big chunk finishing alone.
    """
    chunk_size = min(chunk_size, export_ids_per_request(max(ids, default=0)))
    n_chunks = -(-len(ids) // chunk_size)
    n_chunks = -(-n_chunks // workers) * workers
    size = max(1, -(-len(ids) // n_chunks)) if n_chunks else chunk_size
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # A bounded window of requests in flight: memory stays O(workers x chunk) whatever the project size.
        window: deque[Future[list[dict[str, Any]]]] = deque()
        for start in range(0, len(ids), size):
            window.append(pool.submit(export_tasks, client, project_id, ids[start : start + size]))
            if len(window) > workers:
                yield from _by_id(window.popleft().result())
        while window:
            yield from _by_id(window.popleft().result())


@dataclass(frozen=True)
class Changes:
    """What changed on the server since the watermark, from ids and stamps only (no task fetched yet)."""

    fetch: list[int]  # tasks created or updated since, to fetch and normalize again
    deleted: set[int]
    listed_all_ids: bool  # the task count did not add up, so every id was listed to find deletions
    drafts_changed: int = 0  # tasks without annotations whose drafts appeared or went (`updated_at` unmoved)


def list_changes(
    client: LabelStudio, project_id: int, mark: Watermark, *, head: int = 250
) -> tuple[ProjectState, Changes]:
    """The project's state now, the tasks updated since the watermark, and the tasks deleted since.

    One request usually answers it all: the `head` most recently updated tasks with the project's task
    count (counted before listing, so a task created meanwhile makes the count not add up). Only when
    more tasks changed is the server-side `updated_at` filter listed, and only when the count does not
    add up are all ids listed to find deletions.
    """
    since = mark.since()
    state, newest = newest_task_stamps(client, project_id, limit=head)
    floor = _instant(since)
    updated = {i: ts for i, ts in newest.items() if updated_after(ts, floor)}
    if len(updated) == len(newest) < state.task_count:
        # Every listed task changed: more may have. Ids and stamps only.
        updated = list_task_stamps(client, project_id, query=updated_since_query(since))
    previous = set(mark.task_ids)
    deleted: set[int] = set()
    listed_all = state.task_count != len(previous | set(updated))
    if listed_all:
        current = list_task_stamps(client, project_id)
        deleted = previous - set(current)
        updated.update({i: ts for i, ts in current.items() if i not in previous})
    # Tasks in the overlap window whose stamp we already hold are not fetched again.
    fetch = {i for i, ts in updated.items() if mark.recent.get(str(i)) != ts}
    drafts = _draft_flips(client, project_id, mark) - deleted - fetch
    return state, Changes(
        fetch=sorted(fetch | drafts), deleted=deleted, listed_all_ids=listed_all, drafts_changed=len(drafts)
    )


def _draft_flips(client: LabelStudio, project_id: int, mark: Watermark) -> set[int]:
    """Tasks without annotations whose drafts appeared (no_annotation -> only_drafts) or went (the reverse).

    One ids-only request, made only when the last pull saw tasks without annotations (drafts matter only
    there: they never reach training, but they name the reason a task is unusable).
    """
    if not mark.no_annotation and not mark.only_drafts:
        return set()
    with_drafts = list_task_ids(client, project_id, query=draft_exists_query())
    return (set(mark.no_annotation) & with_drafts) | (set(mark.only_drafts) - with_drafts)


def fetch_tasks(client: LabelStudio, project_id: int, ids: list[int], *, chunk_size: int) -> list[dict[str, Any]]:
    """The given tasks, canonical, in id order (a task deleted meanwhile is simply absent)."""
    tasks: list[dict[str, Any]] = []
    chunk_size = min(chunk_size, export_ids_per_request(max(ids, default=0)))
    for start in range(0, len(ids), chunk_size):
        tasks.extend(export_tasks(client, project_id, ids[start : start + chunk_size]))
    return _by_id(tasks)


def kept_tasks(previous: Iterable[StoredTask], changes: Changes) -> Iterator[StoredTask]:
    """The previous pull's stored tasks that neither changed nor were deleted since."""
    drop = changes.deleted | set(changes.fetch)
    return (t for t in previous if t.id not in drop)
