"""Label Studio webhooks -> debounced Prefect events: parsing, debouncing, the HTTP receiver, end to end."""

from __future__ import annotations

import http.client
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import Event
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.webhook_receiver import (
    EVENT_NAME,
    MAX_BODY_BYTES,
    MAX_TASK_IDS,
    Debouncer,
    RunningReceiver,
    emit_prefect_event,
    resource_id,
    start_in_thread,
)
from pipeline.ingest.client import annotation_result, connect, ensure_project, import_tasks, submit_annotation
from pipeline.ingest.server import LocalLabelStudio, free_port
from pipeline.ingest.webhooks import (
    SECRET_HEADER,
    WEBHOOK_ACTIONS,
    AnnotationChange,
    parse_webhook,
    register_webhook,
)

SECRET = "test-secret-4f1c9a"
CATS = ("billing", "shipping")


# Bodies as Label Studio 1.23.2 posted them (captured from a real server, long fields trimmed).
def _project(pid: int) -> dict[str, Any]:
    return {"id": pid, "title": "webhooks", "task_number": 2, "total_annotations_number": 1}


def _annotation(aid: int, tid: int, pid: int) -> dict[str, Any]:
    return {
        "id": aid,
        "result": [{"from_name": "response", "to_name": "prompt", "type": "textarea", "value": {"text": ["r1"]}}],
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": "2026-12-02T16:04:07.160173Z",
        "updated_at": "2026-12-02T16:04:07.160250Z",
        "task": tid,
        "project": pid,
        "completed_by": 1,
    }


def _task(tid: int, pid: int) -> dict[str, Any]:
    return {"id": tid, "data": {"prompt": "q1"}, "is_labeled": True, "total_annotations": 1, "project": pid}


def created_body(pid: int = 1, tid: int = 3, aid: int = 7, action: str = "ANNOTATION_CREATED") -> bytes:
    return json.dumps(
        {"action": action, "annotation": _annotation(aid, tid, pid), "project": _project(pid), "task": _task(tid, pid)}
    ).encode()


def bulk_created_body(pid: int, tids: list[int]) -> bytes:
    anns = [_annotation(100 + i, t, pid) for i, t in enumerate(tids)]
    return json.dumps(
        {
            "action": "ANNOTATIONS_CREATED",
            "annotation": anns,
            "project": _project(pid),
            "task": [_task(t, pid) for t in tids],
        }
    ).encode()


def deleted_body(pid: int = 1, aid: int = 7) -> bytes:
    return json.dumps(
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": aid}], "project": _project(pid)}
    ).encode()


# ---- parse_webhook -----------------------------------------------------------------------------------


def test_actions_are_label_studio_names() -> None:
    assert WEBHOOK_ACTIONS == ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def test_parse_single_annotation_actions() -> None:
    assert parse_webhook(created_body(1, 3, 7)) == AnnotationChange(1, "ANNOTATION_CREATED", (3,))
    updated = created_body(2, 5, 9, action="ANNOTATION_UPDATED")
    assert parse_webhook(updated) == AnnotationChange(2, "ANNOTATION_UPDATED", (5,))


def test_parse_bulk_created_collects_sorted_unique_task_ids() -> None:
    assert parse_webhook(bulk_created_body(4, [9, 2, 9])) == AnnotationChange(4, "ANNOTATIONS_CREATED", (2, 9))


def test_parse_deleted_has_no_task_ids() -> None:
    assert parse_webhook(deleted_body(3, 7)) == AnnotationChange(3, "ANNOTATIONS_DELETED", ())


@pytest.mark.parametrize("action", ["PROJECT_UPDATED", "TASKS_CREATED", "SOMETHING_NEW"])
def test_parse_ignores_other_actions(action: str) -> None:
    assert parse_webhook(json.dumps({"action": action, "project": _project(1)}).encode()) is None
    assert parse_webhook(json.dumps({"action": action}).encode()) is None


def _with(**fields: Any) -> bytes:
    body = json.loads(created_body())
    body.update(fields)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"ANNOTATION_CREATED"', "JSON object"),
        (json.dumps({"project": _project(1)}).encode(), "'action'"),
        (json.dumps({"action": 5, "project": _project(1)}).encode(), "'action'"),
        (json.dumps({"action": "ANNOTATION_CREATED"}).encode(), "'project'"),
        (_with(project=7), "'project'"),
        (_with(project={"title": "no id"}), "'project.id'"),
        (_with(project={"id": "1"}), "'project.id'"),
        (_with(project={"id": True}), "'project.id'"),
        (_with(project={"id": 0}), "'project.id'"),
        (_with(project={"id": 1.5}), "'project.id'"),
        (_with(task={"id": "3"}), "'task.id'"),
        (_with(task=5), "'task'"),
        (_with(task=[{"id": 3}, "x"]), "'task[1]'"),
        (_with(task=[{"id": 3}, {"id": None}]), "'task[1].id'"),
        (_with(annotation={"id": 7, "task": "3"}), "'annotation.task'"),
        (_with(annotations=[{"id": 7, "task": -1}]), "'annotations[0].task'"),
    ],
)
def test_parse_garbage_names_the_field(body: bytes, names: str) -> None:
    with pytest.raises(ValueError, match="webhook") as e:
        parse_webhook(body)
    assert names in str(e.value)


# ---- Debouncer ---------------------------------------------------------------------------------------


class Collector:
    """An emit that records (project id, summary) and lets a test wait for the n-th call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any], float]] = []
        self._cond = threading.Condition()

    def __call__(self, project_id: int, summary: dict[str, Any]) -> None:
        with self._cond:
            self.calls.append((project_id, summary, time.monotonic()))
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 30.0) -> list[tuple[int, dict[str, Any], float]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout=timeout), self.calls
            return list(self.calls)


def test_debouncer_emits_once_after_the_last_change() -> None:
    emit = Collector()
    d = Debouncer(quiet_s=0.4, max_wait_s=30, emit=emit)
    try:
        for tid in (3, 1, 3):
            d.add(AnnotationChange(1, "ANNOTATION_CREATED", (tid,)))
            time.sleep(0.2)  # shorter than quiet_s: keeps the project pending
        d.add(AnnotationChange(1, "ANNOTATION_UPDATED", (2,)))
        last = time.monotonic()
        assert emit.calls == []
        ((pid, summary, at),) = emit.wait(1)
        assert pid == 1
        assert at >= last + 0.4 - 0.01  # trailing: quiet_s after the LAST change
        assert summary["actions"] == {"ANNOTATION_CREATED": 3, "ANNOTATION_UPDATED": 1}
        assert summary["task_ids"] == [1, 2, 3]
        assert summary["changes"] == 4
        assert summary["task_ids_truncated"] is False
        assert summary["first_at"] < summary["last_at"]
        time.sleep(0.6)
        assert len(emit.calls) == 1  # nothing left to emit
    finally:
        d.close()


def test_debouncer_caps_the_wait_in_a_steady_stream() -> None:
    emit = Collector()
    d = Debouncer(quiet_s=0.5, max_wait_s=1.0, emit=emit)
    try:
        start = time.monotonic()
        added = 0
        while time.monotonic() - start < 2.6:  # never quiet for 0.5 s
            d.add(AnnotationChange(1, "ANNOTATION_UPDATED", (1,)))
            added += 1
            time.sleep(0.1)
        calls = emit.wait(2)
        assert 1.0 - 0.01 <= calls[0][2] - start < 1.0 + 0.5  # max_wait_s after the first change (plus slack)
    finally:
        d.close()
    assert sum(s["changes"] for _, s, _ in emit.calls) == added  # every change counted once


def test_debouncer_separates_projects_and_flushes_on_close() -> None:
    emit = Collector()
    d = Debouncer(quiet_s=60, max_wait_s=600, emit=emit)
    d.add(AnnotationChange(1, "ANNOTATION_CREATED", (10,)))
    d.add(AnnotationChange(2, "ANNOTATIONS_DELETED", ()))
    d.add(AnnotationChange(1, "ANNOTATION_CREATED", (11,)))
    assert emit.calls == []
    d.close()  # well before quiet_s: nothing pending is lost
    by_project = {pid: s for pid, s, _ in emit.calls}
    assert sorted(by_project) == [1, 2] and len(emit.calls) == 2
    assert by_project[1]["actions"] == {"ANNOTATION_CREATED": 2} and by_project[1]["task_ids"] == [10, 11]
    assert by_project[2]["actions"] == {"ANNOTATIONS_DELETED": 1} and by_project[2]["task_ids"] == []
    with pytest.raises(RuntimeError, match="closed"):
        d.add(AnnotationChange(1, "ANNOTATION_CREATED", (1,)))


def test_debouncer_flush_emits_now_and_caps_task_ids() -> None:
    emit = Collector()
    d = Debouncer(quiet_s=60, max_wait_s=600, emit=emit)
    try:
        d.add(AnnotationChange(5, "ANNOTATIONS_CREATED", tuple(range(1, MAX_TASK_IDS + 500))))
        d.flush()
        ((pid, summary, _),) = emit.calls
        assert pid == 5
        assert summary["task_ids"] == list(range(1, MAX_TASK_IDS + 1))
        assert summary["task_ids_truncated"] is True
        d.flush()
        assert len(emit.calls) == 1
    finally:
        d.close()


def test_debouncer_survives_a_failing_emit(caplog: pytest.LogCaptureFixture) -> None:
    emit = Collector()

    def flaky(project_id: int, summary: dict[str, Any]) -> None:
        if project_id == 1:
            raise ConnectionError("Prefect is down")
        emit(project_id, summary)

    d = Debouncer(quiet_s=0.1, max_wait_s=1, emit=flaky)
    try:
        d.add(AnnotationChange(1, "ANNOTATION_CREATED", (1,)))
        time.sleep(0.4)
        d.add(AnnotationChange(2, "ANNOTATION_CREATED", (2,)))
        assert emit.wait(1)[0][0] == 2  # the timer thread lived on
    finally:
        d.close()
    assert "project 1 failed" in caplog.text


@pytest.mark.parametrize(("quiet_s", "max_wait_s", "names"), [(0, 10, "quiet_s"), (5, 1, "max_wait_s")])
def test_debouncer_refuses_bad_windows(quiet_s: float, max_wait_s: float, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Debouncer(quiet_s=quiet_s, max_wait_s=max_wait_s, emit=Collector())


@pytest.mark.parametrize("secret", ["", " padded ", "naïve", "change-me-webhook-secret"])
def test_receiver_refuses_an_unusable_secret(secret: str) -> None:
    with pytest.raises(ValueError, match=r"LORA_PIPELINE_WEBHOOK_SECRET|ASCII"):
        start_in_thread("127.0.0.1", 0, secret, emit=Collector())


def test_cli_refuses_the_placeholder_secret_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lora-pipeline webhook-receiver` with .env.example's placeholder exits 2 before it listens."""
    from pipeline.cli import main

    monkeypatch.setenv("LORA_PIPELINE_WEBHOOK_SECRET", "change-me-webhook-secret")
    assert main(["webhook-receiver", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lora-pipeline: error: the webhook secret is still the .env.example placeholder")


def test_real_emit_refuses_to_start_without_a_prefect_api() -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(ValueError, match="PREFECT_API_URL"):
        start_in_thread("127.0.0.1", 0, SECRET, emit=emit_prefect_event)


def test_real_emit_raises_when_prefect_is_unreachable() -> None:
    """A failed send is an error the debouncer logs, not a silently dropped event."""
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}), pytest.raises(OSError):
        emit_prefect_event(1, {"actions": {"ANNOTATION_CREATED": 1}})


# ---- HTTP over loopback ------------------------------------------------------------------------------


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw_post(receiver: RunningReceiver, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    """A POST without urllib's help (it always sets Content-Length)."""
    host, port = receiver.server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    try:
        conn.putrequest("POST", "/label-studio", skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders(body or None)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


@pytest.fixture
def collected() -> Iterator[tuple[RunningReceiver, Collector]]:
    emit = Collector()
    receiver = start_in_thread("127.0.0.1", 0, SECRET, quiet_s=0.2, max_wait_s=5, emit=emit)
    try:
        yield receiver, emit
    finally:
        receiver.stop()


AUTH = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}


@pytest.mark.slow
def test_http_checks_the_secret_and_never_logs_it(
    collected: tuple[RunningReceiver, Collector], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, emit = collected
    caplog.set_level(logging.DEBUG)
    assert request(receiver.webhook_url, created_body()) == (401, f"missing or wrong {SECRET_HEADER}\n")
    wrong = {SECRET_HEADER: SECRET + "x"}
    assert request(receiver.webhook_url, created_body(), wrong)[0] == 401
    assert request(receiver.webhook_url, created_body(), {SECRET_HEADER: "ünï"})[0] == 401
    assert SECRET not in caplog.text
    receiver.stop()
    assert emit.calls == []


@pytest.mark.slow
def test_http_answers_garbage_with_4xx_and_keeps_serving(collected: tuple[RunningReceiver, Collector]) -> None:
    receiver, emit = collected
    code, text = request(receiver.webhook_url, _with(project={"id": "1"}), AUTH)
    assert (code, text.strip()) == (400, "webhook field 'project.id' must be an integer, got str")
    assert request(receiver.webhook_url, b"\x00not json", AUTH)[0] == 400
    assert request(receiver.webhook_url, b"x" * (MAX_BODY_BYTES + 1), AUTH)[0] == 413
    assert raw_post(receiver, {SECRET_HEADER: SECRET}) == (411, "Content-Length required\n")
    assert raw_post(receiver, {SECRET_HEADER: SECRET, "Content-Length": "ten"})[0] == 400
    assert raw_post(receiver, {SECRET_HEADER: SECRET, "Content-Length": "-1"})[0] == 400
    assert request(receiver.url + "/health") == (200, "ok\n")
    assert request(receiver.webhook_url)[0] == 405  # GET
    assert request(receiver.webhook_url, b"{}", AUTH, method="PUT")[0] == 405
    assert request(receiver.url + "/nope")[0] == 404
    assert request(receiver.url + "/nope", b"{}", AUTH)[0] == 404
    assert request(receiver.url + "/health", b"{}", AUTH)[0] == 405
    ignored = json.dumps({"action": "PROJECT_UPDATED", "project": _project(1)}).encode()
    assert request(receiver.webhook_url, ignored, AUTH) == (200, "ignored\n")
    time.sleep(0.5)
    assert emit.calls == []  # none of that reached the debouncer


@pytest.mark.slow
def test_http_accepts_and_debounces(collected: tuple[RunningReceiver, Collector]) -> None:
    receiver, emit = collected
    assert request(receiver.webhook_url, created_body(8, 3), AUTH) == (202, "accepted\n")
    assert request(receiver.webhook_url, created_body(8, 4, action="ANNOTATION_UPDATED"), AUTH)[0] == 202
    assert request(receiver.webhook_url, deleted_body(9), AUTH)[0] == 202
    calls = emit.wait(2)
    by_project = {pid: s for pid, s, _ in calls}
    assert by_project[8]["actions"] == {"ANNOTATION_CREATED": 1, "ANNOTATION_UPDATED": 1}
    assert by_project[8]["task_ids"] == [3, 4]
    assert by_project[9]["actions"] == {"ANNOTATIONS_DELETED": 1}


@pytest.mark.slow
def test_stop_flushes_what_is_pending() -> None:
    emit = Collector()
    receiver = start_in_thread("127.0.0.1", 0, SECRET, quiet_s=600, max_wait_s=1800, emit=emit)
    try:
        assert request(receiver.webhook_url, created_body(11, 2), AUTH)[0] == 202
        assert emit.calls == []
    finally:
        receiver.stop()
    assert [(pid, s["task_ids"]) for pid, s, _ in emit.calls] == [(11, [2])]


_SERVE = """
import json, sys
from flows.webhook_receiver import serve

def emit(project_id, summary):
    print(json.dumps([project_id, summary]), flush=True)

serve("127.0.0.1", int(sys.argv[1]), sys.argv[2], quiet_s=600, emit=emit)
print("stopped", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_and_flushes(signum: int) -> None:
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(port), SECRET], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return request(base + "/health")[0] == 200
            except OSError:
                return proc.poll() is not None  # exited: stop waiting, the asserts below say why

        assert wait_for(healthy, timeout=60)
        assert request(base + "/label-studio", created_body(21, 5), AUTH)[0] == 202
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = out.decode().splitlines()
    assert lines[-1] == "stopped"
    ((pid, summary),) = [json.loads(line) for line in lines[:-1]]
    assert pid == 21 and summary["actions"] == {"ANNOTATION_CREATED": 1} and summary["task_ids"] == [5]


# ---- end to end --------------------------------------------------------------------------------------


def wait_for(fetch: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@pytest.mark.slow
def test_label_studio_annotation_reaches_the_receiver(label_studio: LocalLabelStudio) -> None:
    client = connect(label_studio.url, label_studio.token)
    project = ensure_project(client, "webhook-e2e", CATS)
    (tid,) = import_tasks(client, project.id, [{"prompt": "Where is my parcel?"}])
    emit = Collector()
    with start_in_thread("127.0.0.1", 0, SECRET, quiet_s=0.5, max_wait_s=10, emit=emit) as receiver:
        first = register_webhook(client, project.id, receiver.webhook_url, "an-older-secret")
        assert register_webhook(client, project.id, receiver.webhook_url, SECRET) == first
        hooks = [w for w in client.webhooks.list(project=str(project.id)) if w.url == receiver.webhook_url]
        assert [w.id for w in hooks] == [first]  # updated, not duplicated
        assert hooks[0].headers[SECRET_HEADER] == SECRET and hooks[0].send_payload is True
        assert sorted(hooks[0].actions or []) == sorted(WEBHOOK_ACTIONS)

        aid = submit_annotation(client, tid, "It left the depot today.", "shipping")
        ((pid, summary, _),) = emit.wait(1)
        assert pid == project.id
        assert summary["actions"] == {"ANNOTATION_CREATED": 1} and summary["task_ids"] == [tid]

        client.annotations.update(id=aid, result=annotation_result("It left this morning.", "shipping"))
        client.annotations.delete(id=aid)
        calls = wait_for(
            lambda: sum(sum(s["actions"].values()) for _, s, _ in emit.calls) >= 3 and emit.calls, timeout=30
        )
        actions = [a for _, s, _ in calls[1:] for a in s["actions"]]
        assert sorted(actions) == ["ANNOTATIONS_DELETED", "ANNOTATION_UPDATED"]
        assert {pid for pid, _, _ in calls} == {project.id}


def read_events(project_id: int) -> list[Event]:
    filt = EventFilter(
        event=EventNameFilter(name=[EVENT_NAME]), resource=EventResourceFilter(id=[resource_id(project_id)])
    )
    with get_client(sync_client=True) as c:
        return list(c.read_events(filt, limit=10).events)


@pytest.mark.slow
def test_annotation_becomes_a_prefect_event(label_studio: LocalLabelStudio, prefect_harness: None) -> None:
    """Label Studio -> receiver -> the real emit -> Prefect's API, read back through /events/filter."""
    client = connect(label_studio.url, label_studio.token)
    project = ensure_project(client, "webhook-prefect-e2e", CATS)
    (tid,) = import_tasks(client, project.id, [{"prompt": "Refund?"}])
    assert read_events(project.id) == []
    with start_in_thread("127.0.0.1", 0, SECRET, quiet_s=0.5, max_wait_s=10, emit=emit_prefect_event) as receiver:
        register_webhook(client, project.id, receiver.webhook_url, SECRET)
        submit_annotation(client, tid, "Refunds take five days.", "billing")
        events = wait_for(lambda: read_events(project.id))
    assert len(events) == 1, events
    (event,) = events
    assert event.event == EVENT_NAME
    assert event.resource.id == f"label-studio.project.{project.id}"
    assert event.resource.get("prefect.resource.name") == f"Label Studio project {project.id}"
    assert event.payload["actions"] == {"ANNOTATION_CREATED": 1}
    assert event.payload["task_ids"] == [tid]
    assert event.payload["changes"] == 1
