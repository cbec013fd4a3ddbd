"""Label Studio client calls the pipeline makes, with errors that say what to fix."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.ingest.http_retry import RETRY_STATUSES, RetryPolicy, retrying_client
from pipeline.ingest.labeling_config import (
    CATEGORY_NAME,
    PROMPT_NAME,
    RESPONSE_NAME,
    build_labeling_config,
    check_labeling_config,
)


class LabelStudioError(RuntimeError):
    """Label Studio is unreachable, rejects our token, or lacks the project; the message says the fix."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio stayed down (refused connections, 5xx, timeouts) past the retries and the outage patience.

    Unlike a rejected token or a missing project this may pass: Prefect retries the task on it.
    """


class RequestLineTooLong(LabelStudioError):
    """The server (or a proxy) refused a request line as too long (HTTP 414)."""


@dataclass(frozen=True)
class ProjectRef:
    """A verified project: its id, title and the categories its labeling config offers."""

    id: int
    title: str
    categories: tuple[str, ...]


def retry_policy(cfg: Any) -> RetryPolicy:
    """The retry policy a `LabelStudioConfig` asks for (retries, backoff, outage patience)."""
    return RetryPolicy(retries=cfg.retries, backoff_s=cfg.backoff_s, patience_s=cfg.outage_patience_s)


def connect(url: str, api_key: str, *, timeout_s: float = 30.0, policy: RetryPolicy | None = None) -> LabelStudio:
    """A client for `url`, after checking that the server answers and accepts `api_key`.

    Every call of the returned client (and of `raw_get`) has a timeout and retries 429, 5xx and
    dropped connections with backoff (pipeline/ingest/http_retry.py).
    """
    base = url.rstrip("/")
    http = retrying_client(timeout_s=timeout_s, policy=policy or RetryPolicy())
    try:
        r = http.get(f"{base}/health")
    except httpx.HTTPError as e:
        raise LabelStudioUnavailable(
            f"Label Studio at {base} does not answer ({type(e).__name__}); start it or fix LABEL_STUDIO_URL"
        ) from None
    if r.status_code in RETRY_STATUSES:
        raise LabelStudioUnavailable(f"{base}/health answered HTTP {r.status_code}: Label Studio is not up yet")
    if r.status_code != 200:
        raise LabelStudioError(
            f"{base}/health answered HTTP {r.status_code}; is LABEL_STUDIO_URL a Label Studio server?"
        )
    client = LabelStudio(base_url=base, api_key=api_key, timeout=timeout_s, httpx_client=http)
    try:
        client.users.whoami()
    except ApiError as e:
        if e.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {base} rejected the API key (HTTP {e.status_code}); set LABEL_STUDIO_API_KEY "
                "to the token shown under Account & Settings (legacy tokens must be enabled for the organization)"
            ) from None
        raise
    return client


def _project_ref(project: Any) -> ProjectRef:
    info = check_labeling_config(project.label_config or "", project=f"Label Studio project {project.id}")
    return ProjectRef(id=int(project.id), title=str(project.title), categories=info.categories)


def get_project(client: LabelStudio, project_id: int) -> ProjectRef:
    """The project with this id, with its labeling config checked."""
    try:
        project = client.projects.get(id=project_id)
    except ApiError as e:
        if e.status_code == 404:
            raise LabelStudioError(
                f"Label Studio project {project_id} does not exist; check labelstudio.project_id in the config "
                "or create the project with `lora-pipeline labelstudio init`"
            ) from None
        raise
    return _project_ref(project)


def find_project(client: LabelStudio, title: str) -> ProjectRef | None:
    """The one project titled `title` (labeling config checked), None when there is none; several are an error."""
    ids = sorted(int(p.id) for p in client.projects.list(title=title) if p.title == title)
    if len(ids) > 1:
        raise LabelStudioError(
            f"{len(ids)} Label Studio projects are titled {title!r} (ids {ids}); set labelstudio.project_id to pick one"
        )
    return get_project(client, ids[0]) if ids else None


def ensure_project(client: LabelStudio, title: str, categories: Sequence[str]) -> ProjectRef:
    """The project titled `title`, created with the pipeline's labeling config if it does not exist."""
    ref = find_project(client, title)
    if ref is None:
        created = client.projects.create(title=title, label_config=build_labeling_config(tuple(categories)))
        ref = get_project(client, int(created.id))
    missing = sorted(set(categories) - set(ref.categories))
    if missing:
        raise LabelStudioError(
            f"Label Studio project {ref.id} ({title!r}) lacks categories {missing} that the config lists; "
            "add them under Settings > Labeling Interface or fix labelstudio.categories"
        )
    return ref


def import_tasks(
    client: LabelStudio, project_id: int, items: Sequence[dict[str, Any]], *, batch_size: int = 500
) -> list[int]:
    """Import task data dicts (each holding at least `prompt`); returns the new task ids in order."""
    for i, item in enumerate(items):
        if not isinstance(item.get(PROMPT_NAME), str):
            raise ValueError(f"task item {i} has no string {PROMPT_NAME!r} field: {sorted(item)}")
    ids: list[int] = []
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        r = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
        ids.extend(int(t) for t in (r.task_ids or []))
    return ids


def annotation_result(response: str, category: str | None) -> list[dict[str, Any]]:
    """The `result` list an annotator's submission produces in the pipeline's labeling config."""
    result: list[dict[str, Any]] = [
        {
            "from_name": RESPONSE_NAME,
            "to_name": PROMPT_NAME,
            "type": "textarea",
            "value": {"text": [response]},
        }
    ]
    if category is not None:
        result.append(
            {
                "from_name": CATEGORY_NAME,
                "to_name": PROMPT_NAME,
                "type": "choices",
                "value": {"choices": [category]},
            }
        )
    return result


def submit_annotation(
    client: LabelStudio,
    task_id: int,
    response: str,
    category: str | None,
    *,
    ground_truth: bool = False,
) -> int:
    """Submit an annotation on a task as an annotator would; returns the annotation id."""
    ann = client.annotations.create(
        id=task_id,
        result=annotation_result(response, category),
        ground_truth=ground_truth,
        was_cancelled=False,
    )
    return int(ann.id)


def skip_task(client: LabelStudio, task_id: int) -> int:
    """Record a cancelled (skipped) annotation on a task, as the Skip button does."""
    ann = client.annotations.create(id=task_id, result=[], was_cancelled=True)
    return int(ann.id)


def iter_tasks(client: LabelStudio, project_id: int, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
    """Every task of the project with its annotations, as plain JSON dicts (paginated)."""
    for task in client.tasks.list(project=project_id, fields="all", page_size=page_size):
        yield task.model_dump(mode="json")


def _get(client: LabelStudio, path: str, params: Any) -> httpx.Response:
    """GET an API path through the client's retrying transport and auth; raises unless HTTP 200."""
    wrapper = client._client_wrapper  # the SDK's own auth headers (legacy token or refreshed PAT)
    r = wrapper.httpx_client.httpx_client.get(
        f"{wrapper.get_base_url()}{path}", params=params, headers=wrapper.get_headers()
    )
    if r.status_code in RETRY_STATUSES:
        # The transport already retried these: an HTTPError, so callers report exhausted retries.
        r.raise_for_status()
    if r.status_code == 414:
        raise RequestLineTooLong(f"GET {path} answered HTTP 414: request line of {len(str(r.request.url))} bytes")
    if r.status_code != 200:
        raise LabelStudioError(f"GET {path} answered HTTP {r.status_code}: {r.text[:200]!r}")
    return r


def parse_json(body: bytes | str, where: str) -> Any:
    """JSON from Label Studio (an API answer or an export file); a `ValueError` names `where` when it is not JSON.

    Never a RecursionError: orjson refuses nesting deeper than 1,024 levels, and the stdlib (tried only for
    what orjson refuses, e.g. escaped lone surrogates) runs out of stack below that.
    """
    try:
        return orjson.loads(body)  # several times faster than the stdlib on export chunks
    except orjson.JSONDecodeError as e:
        first = str(e)
    try:
        # orjson refuses escaped lone surrogates that the stdlib accepts: bad task data, still a task.
        return json.loads(body)
    except RecursionError:
        raise ValueError(f"{where} is not usable JSON: nested too deeply ({first})") from None
    except ValueError as e:  # JSONDecodeError, or an integer of over 4,300 digits
        raise ValueError(f"{where} is not JSON ({e})") from None


def raw_get(client: LabelStudio, path: str, params: Any) -> Any:
    """GET an API path the SDK does not cover well, through the client's retrying transport and auth."""
    return _json(_get(client, path, params).content, path)


def _json(body: bytes, path: str) -> Any:
    try:
        return parse_json(body, f"GET {path}'s answer")
    except ValueError as e:
        raise LabelStudioError(str(e)) from None


@dataclass(frozen=True)
class ProjectState:
    """A project's task count and the server's clock when it was read."""

    task_count: int
    # The response's `Date` header: the clock Label Studio stamps `updated_at` with (None if absent).
    server_time: datetime | None


def _server_time(r: httpx.Response) -> datetime | None:
    date = r.headers.get("date")
    return parsedate_to_datetime(date).astimezone(UTC) if date else None


def newest_task_stamps(client: LabelStudio, project_id: int, *, limit: int) -> tuple[ProjectState, dict[int, str]]:
    """The project's state and the `updated_at` of its `limit` most recently updated tasks, in one request.

    The server counts the tasks before it lists them, so a task created in between is listed but not
    counted (never the other way round).
    """
    params = {
        "project": project_id,
        "fields": "task_only",
        "include": "id,updated_at",
        "page_size": limit,
        "query": json.dumps({"ordering": ["-tasks:updated_at"]}),
    }
    r = _get(client, "/api/tasks", params)
    body = _json(r.content, "/api/tasks")
    stamps = {int(t["id"]): str(t["updated_at"]) for t in body["tasks"]}
    return ProjectState(task_count=int(body["total"]), server_time=_server_time(r)), stamps


def iter_task_fields(
    client: LabelStudio, project_id: int, include: str, *, page_size: int = 5000, query: str | None = None
) -> Iterator[dict[str, Any]]:
    """Tasks of the project (all, or those matching a Data Manager `query`) with only the `include` fields."""
    page = 1
    seen = 0
    extra = {"query": query} if query is not None else {}
    while True:
        body = raw_get(
            client,
            "/api/tasks",
            {
                **extra,
                "project": project_id,
                "fields": "task_only",
                "include": include,
                "page_size": page_size,
                "page": page,
            },
        )
        yield from body["tasks"]
        seen += len(body["tasks"])
        if seen >= int(body["total"]) or not body["tasks"]:
            return
        page += 1


def list_task_stamps(
    client: LabelStudio, project_id: int, *, page_size: int = 5000, query: str | None = None
) -> dict[int, str]:
    """Task ids of the project (all, or those matching a Data Manager `query`) with their `updated_at`."""
    return {
        int(t["id"]): str(t["updated_at"])
        for t in iter_task_fields(client, project_id, "id,updated_at", page_size=page_size, query=query)
    }


def task_filter(column: str, operator: str, kind: str, value: Any) -> dict[str, Any]:
    """A Data Manager filter on one task column (`filters` of a saved view, or of a tasks API `query`)."""
    item = {"filter": f"filter:tasks:{column}", "operator": operator, "type": kind, "value": value}
    return {"conjunction": "and", "items": [item]}


def draft_exists_query() -> str:
    """The tasks API filter (Data Manager JSON) for tasks with at least one draft (its "Drafts" column)."""
    return json.dumps({"filters": task_filter("draft_exists", "equal", "Boolean", True)})


def list_task_ids(client: LabelStudio, project_id: int, *, query: str, page_size: int = 5000) -> set[int]:
    """Ids of the project's tasks that match a Data Manager `query`."""
    return {int(t["id"]) for t in iter_task_fields(client, project_id, "id", page_size=page_size, query=query)}


def task_id_bounds(client: LabelStudio, project_id: int) -> tuple[int, int, ProjectState]:
    """(lowest task id, highest task id, the project's state) in two tiny requests; (0, -1, ...) if empty."""
    ends: list[int] = []
    states: list[ProjectState] = []
    for ordering in ("tasks:id", "-tasks:id"):
        params = {
            "project": project_id,
            "fields": "task_only",
            "include": "id",
            "page_size": 1,
            "query": json.dumps({"ordering": [ordering]}),
        }
        r = _get(client, "/api/tasks", params)
        body = _json(r.content, "/api/tasks")
        states.append(ProjectState(task_count=int(body["total"]), server_time=_server_time(r)))
        if not body["tasks"]:
            return 0, -1, states[0]
        ends.append(int(body["tasks"][0]["id"]))
    # The first answer's clock: the earlier one, so no change after it can be missed.
    return ends[0], ends[1], ProjectState(task_count=states[-1].task_count, server_time=states[0].server_time)


# Request-line budget of an export request. Ids travel in the query string (`ids%5B%5D=123&`), and servers
# and proxies cap the request line: nginx (in front of Label Studio's Docker image) at 8 KiB by default,
# gunicorn at 4094 bytes. Chunks are sized to stay under this; a stricter server's 414 splits them further.
EXPORT_REQUEST_LINE_BYTES = 7000
_ID_PARAM_BYTES = len("&ids%5B%5D=")


def export_ids_per_request(largest_id: int, budget: int = EXPORT_REQUEST_LINE_BYTES) -> int:
    """How many ids (none above `largest_id`) fit one export request line within `budget` bytes."""
    return max(1, (budget - 200) // (_ID_PARAM_BYTES + len(str(max(largest_id, 0)))))  # 200: path and fixed params


def export_tasks(client: LabelStudio, project_id: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The given tasks in Label Studio's JSON export format (annotations, drafts).

    One request, unless the server answers 414 (request line too long): then the ids are halved until
    the requests pass, so a proxy stricter than `EXPORT_REQUEST_LINE_BYTES` costs requests, not the pull.
    """
    params = [("export_type", "JSON"), ("download_all_tasks", "true")] + [("ids[]", i) for i in task_ids]
    try:
        tasks = raw_get(client, f"/api/projects/{project_id}/export", params)
    except RequestLineTooLong:
        if len(task_ids) < 2:
            raise
        half = len(task_ids) // 2
        return export_tasks(client, project_id, task_ids[:half]) + export_tasks(client, project_id, task_ids[half:])
    if not isinstance(tasks, list):
        raise LabelStudioError(f"export of project {project_id} did not return a JSON list of tasks")
    return tasks


def updated_since_query(since_iso: str) -> str:
    """The tasks API filter (Data Manager JSON) for tasks whose `updated_at` is after `since_iso`.

    `updated_at` (not `completed_at`) is the field that moves when an annotation is created,
    edited, skipped or deleted (checked against Label Studio 1.23); drafts do not move it.
    """
    # The server parses exactly `%Y-%m-%dT%H:%M:%S.%fZ` (HTTP 500 without the fraction): normalize to it.
    since = datetime.fromisoformat(since_iso)
    since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    value = since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"filters": task_filter("updated_at", "greater", "Datetime", value)})
