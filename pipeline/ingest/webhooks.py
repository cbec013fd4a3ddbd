"""Label Studio webhooks: which actions we listen to, registering the webhook, parsing its POSTs.

Webhooks are hints: the pull reconciles by watermark, so a lost webhook costs latency, never data.
Parsing is strict about shape (a `ValueError` naming the field) so the receiver can answer 400.

The body Label Studio 1.23 POSTs with `send_payload=True` (label_studio/webhooks/utils.py,
`_process_webhook_batch`, serializers in webhooks/serializers_for_hooks.py)::

    {"action": "ANNOTATION_CREATED" | "ANNOTATION_UPDATED",
     "annotation": {"id": 7, "task": 3, "project": 1, ...},     # one annotation, all model fields
     "task": {"id": 3, "data": {...}, "project": 1, ...},      # its task, all model fields
     "project": {"id": 1, "title": "...", ...}}                # the project, with counts
    {"action": "ANNOTATIONS_CREATED", "annotation": [{...}, ...], "task": [{...}, ...], "project": {...}}
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 7}], "project": {...}}   # ids only, no task
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.ingest.client import LabelStudioError
from pipeline.ingest.task_checks import ID_MAX, preview

# The actions after which the annotations a pull would see may have changed.
WEBHOOK_ACTIONS: tuple[str, ...] = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
)
# Label Studio sends this header (set at registration) with every POST; the receiver checks it.
SECRET_HEADER = "X-Lora-Pipeline-Secret"


@dataclass(frozen=True)
class AnnotationChange:
    """One webhook's worth of change: the project, the Label Studio action and the tasks it touched."""

    project_id: int
    action: str
    # Empty for ANNOTATIONS_DELETED: Label Studio sends only the deleted annotations' ids.
    task_ids: tuple[int, ...]


def check_secret(secret: str) -> str:
    """The secret, if usable as an HTTP header value; else a `ValueError` that says how to make one."""
    if not secret:
        raise ValueError(
            "the webhook secret is empty; set LORA_PIPELINE_WEBHOOK_SECRET to a random string, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if "change-me" in secret:
        raise ValueError(
            "the webhook secret is still the .env.example placeholder (change-me); set LORA_PIPELINE_WEBHOOK_SECRET "
            "to a random string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if not (secret.isascii() and secret.isprintable()) or secret != secret.strip():
        raise ValueError(
            "the webhook secret must be printable ASCII without surrounding spaces (it travels as an HTTP "
            "header); generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return secret


def _positive_int(value: Any, field: str) -> int:
    # bool is an int subclass: `true` is not an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"webhook field {field!r} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= ID_MAX:
        raise ValueError(f"webhook field {field!r} must be an id in 1..2^63-1, got {preview(value)}")
    return value


def _objects(payload: dict[str, Any], key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The object(s) under `key` (one object or a list of them) with their field paths; none if absent."""
    value = payload.get(key)
    if value is None:
        return
    items = [(key, value)] if isinstance(value, dict) else None
    if isinstance(value, list):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if items is None:
        raise ValueError(f"webhook field {key!r} must be an object or a list of objects, got {type(value).__name__}")
    for field, obj in items:
        if not isinstance(obj, dict):
            raise ValueError(f"webhook field {field!r} must be an object, got {type(obj).__name__}")
        yield field, obj


def _task_ids(payload: dict[str, Any]) -> tuple[int, ...]:
    ids: set[int] = set()
    for key in ("task", "tasks"):
        for field, task in _objects(payload, key):
            ids.add(_positive_int(task.get("id"), f"{field}.id"))
    for key in ("annotation", "annotations"):
        for field, ann in _objects(payload, key):
            if ann.get("task") is not None:  # absent in ANNOTATIONS_DELETED (ids only)
                ids.add(_positive_int(ann["task"], f"{field}.task"))
    return tuple(sorted(ids))


def parse_webhook(body: bytes) -> AnnotationChange | None:
    """The change a Label Studio webhook body announces; None for actions we ignore.

    Raises `ValueError` naming the field for anything that is not a Label Studio webhook body.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"webhook body is not JSON: {type(e).__name__}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"webhook body must be a JSON object, got {type(payload).__name__}")
    action = payload.get("action")
    if not isinstance(action, str):
        raise ValueError(f"webhook field 'action' must be a string, got {type(action).__name__}")
    if action not in WEBHOOK_ACTIONS:
        return None
    project = payload.get("project")
    if not isinstance(project, dict):
        raise ValueError(
            f"webhook field 'project' must be an object holding the project id, got {type(project).__name__} "
            "(register the webhook with send_payload=True)"
        )
    project_id = _positive_int(project.get("id"), "project.id")
    return AnnotationChange(project_id=project_id, action=action, task_ids=_task_ids(payload))


def _ls_error(e: ApiError, project_id: int, url: str) -> LabelStudioError:
    if e.status_code == 404:
        return LabelStudioError(f"Label Studio project {project_id} does not exist; check labelstudio.project_id")
    if e.status_code == 400:
        return LabelStudioError(
            f"Label Studio refused webhook URL {url!r}: {e.body}; with SSRF protection on it refuses loopback "
            "and private addresses (set SSRF_PROTECTION_ENABLED=false on the Label Studio server, or use a "
            "public URL)"
        )
    return LabelStudioError(f"Label Studio answered HTTP {e.status_code} to a webhook call: {e.body}")


def register_webhook(client: LabelStudio, project_id: int, url: str, secret: str) -> int:
    """Point the project's annotation webhooks at `url` (idempotent); returns the webhook id.

    A webhook of the project with the same URL is updated (other headers kept); duplicates of it are
    removed, so Label Studio posts each change once.
    """
    check_secret(secret)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook url must start with http:// or https://, got {url!r}")
    settings: dict[str, Any] = {
        "actions": list(WEBHOOK_ACTIONS),
        "send_payload": True,
        "send_for_all_actions": False,
        "is_active": True,
    }
    try:
        same = sorted(
            (w for w in client.webhooks.list(project=str(project_id)) if w.project == project_id and w.url == url),
            key=lambda w: int(w.id or 0),
        )
        if not same:
            created = client.webhooks.create(url=url, project=project_id, headers={SECRET_HEADER: secret}, **settings)
            return int(created.id)  # type: ignore[arg-type]
        keep, extra = same[0], same[1:]
        headers = {**(keep.headers or {}), SECRET_HEADER: secret}
        client.webhooks.update(int(keep.id), url=url, headers=headers, **settings)  # type: ignore[arg-type]
        for w in extra:
            client.webhooks.delete(int(w.id))  # type: ignore[arg-type]
        return int(keep.id)  # type: ignore[arg-type]
    except ApiError as e:
        raise _ls_error(e, project_id, url) from None
