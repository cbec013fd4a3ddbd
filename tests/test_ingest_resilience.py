"""Pulls through a flaky loopback proxy in front of a real Label Studio: retries make them whole or fail cleanly."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import (
    EXPORT_REQUEST_LINE_BYTES,
    LabelStudioError,
    connect,
    ensure_project,
    export_ids_per_request,
    import_tasks,
    skip_task,
    submit_annotation,
)
from pipeline.ingest.http_retry import RetryPolicy, RetryTransport
from pipeline.ingest.pull import Pull, pull_project
from pipeline.ingest.server import LocalLabelStudio
from pipeline.validate.prepare import prepare_dataset

CATS = ("billing", "shipping")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}


class FlakyProxy:
    """Forwards to `upstream`; fails a fraction of requests (503, 429 or a dropped connection) and stalls others."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_rate: float,
        stall_rate: float = 0.0,
        stall_s: float = 0.0,
        seed: int = 0,
        max_request_line: int | None = None,
        port: int = 0,
    ):
        self.upstream, self.fail_rate, self.stall_rate, self.stall_s = upstream, fail_rate, stall_rate, stall_s
        self.max_request_line = max_request_line  # answer 414 above it, as gunicorn (4094) and nginx (8k) do
        self.too_long = 0
        self.fail_after: int | None = None  # from this request on, everything fails
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = self.failed = self.stalled = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

        self.upstream_down = 0  # requests answered 502 because the upstream refused the connection
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.client = httpx.Client(timeout=60)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        if self.max_request_line is not None and len(h.requestline) > self.max_request_line:
            with self.lock:
                self.too_long += 1
            h.send_response(414)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        with self.lock:
            self.requests += 1
            n, roll, mode, stall = self.requests, self.rng.random(), self.rng.randrange(3), self.rng.random()
        if roll < self.fail_rate or (self.fail_after is not None and n >= self.fail_after):
            with self.lock:
                self.failed += 1
            if mode == 0:  # connection reset: no response at all
                h.close_connection = True
                h.connection.shutdown(2)
                return
            h.send_response(503 if mode == 1 else 429)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if stall < self.stall_rate:
            with self.lock:
                self.stalled += 1
            time.sleep(self.stall_s)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP | {"host"}}
        try:
            r = self.client.request(h.command, self.upstream + h.path, content=body, headers=headers)
        except httpx.ConnectError:
            # What a reverse proxy answers while the server behind it restarts.
            with self.lock:
                self.upstream_down += 1
            h.send_response(502)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in _HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(r.content)))
        h.end_headers()
        h.wfile.write(r.content)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture(scope="module")
def project(label_studio: LocalLabelStudio) -> Iterator[int]:
    client = connect(label_studio.url, label_studio.token)
    ref = ensure_project(client, "resilience-test", CATS)
    ids = import_tasks(client, ref.id, [{"prompt": f"Q{i}?"} for i in range(40)])
    for i, tid in enumerate(ids[:30]):
        submit_annotation(client, tid, f"A{i}.", CATS[i % 2] if i != 5 else None)
    skip_task(client, ids[30])
    yield ref.id


def _cfg(project_id: int, **kw: object) -> LabelStudioConfig:
    base = {
        "project_id": project_id,
        "categories": CATS,
        "export_chunk_size": 4,
        "workers": 2,
        "backoff_s": 0.01,
        "outage_patience_s": 0.0,  # these tests count retries; tests/test_ingest_outage.py waits out outages
    }
    return LabelStudioConfig(**{**base, **kw})


def _assert_same_pull(got: Pull, expected: Pull) -> None:
    for frame in ("records", "unusable", "quarantined"):
        pd.testing.assert_frame_equal(getattr(got.normalized, frame), getattr(expected.normalized, frame), obj=frame)


@pytest.mark.slow
def test_pull_through_20_percent_failures_and_stalls_is_identical(
    ls_env: LocalLabelStudio, project: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """20% of requests fail (503/429/reset) and 10% stall past the timeout: the pull still matches a clean one."""
    clean = pull_project(Settings(), _cfg(project))
    with FlakyProxy(ls_env.url, fail_rate=0.2, stall_rate=0.1, stall_s=2.5, seed=1) as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        flaky = pull_project(Settings(), _cfg(project, retries=10, timeout_s=2.0))
    assert proxy.failed >= 3 and proxy.stalled >= 1, (proxy.requests, proxy.failed, proxy.stalled)
    assert flaky.normalized.tasks_seen == clean.normalized.tasks_seen == 40
    _assert_same_pull(flaky, clean)


@pytest.mark.slow
def test_pull_failing_part_way_leaves_previous_snapshot_intact(
    ls_env: LocalLabelStudio, project: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every request fails from some point on: a clear LabelStudioError, and no new or half-written file."""
    root = tmp_path / "snapshots"
    prepare_dataset(pull_project(Settings(), _cfg(project), snapshots_root=root), root)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with FlakyProxy(ls_env.url, fail_rate=0.0) as proxy:
        proxy.fail_after = 6  # connect and project lookup pass; the task fetch dies
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        with pytest.raises(LabelStudioError, match=r"pulling Label Studio project \d+ from .* failed after 2 retries"):
            pull_project(Settings(), _cfg(project, retries=2), snapshots_root=root, full=True)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before


@pytest.mark.slow
def test_unreachable_through_100_percent_failures_is_a_clear_error(
    label_studio: LocalLabelStudio, tmp_path: Path
) -> None:
    """Every request fails: connect gives up after its retries with a one-line message."""
    with FlakyProxy(label_studio.url, fail_rate=1.0) as proxy, pytest.raises(LabelStudioError) as e:
        connect(proxy.url, label_studio.token, policy=RetryPolicy(retries=3, backoff_s=0.01))
    assert "\n" not in str(e.value) and proxy.url in str(e.value)
    assert proxy.requests == 4  # the first try and 3 retries


def test_retry_transport_does_not_repeat_a_post_the_server_may_have_applied() -> None:
    """A POST that got a 500 is not retried (it may have created something); a GET is."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(500)

    client = httpx.Client(transport=RetryTransport(RetryPolicy(retries=2, backoff_s=0), httpx.MockTransport(handler)))
    assert client.post("http://x/api/annotations").status_code == 500
    assert calls == ["POST"]
    assert client.get("http://x/api/tasks").status_code == 500
    assert calls == ["POST", "GET", "GET", "GET"]


def test_export_requests_stay_within_the_request_line_budget() -> None:
    """The largest chunk of the largest ids still fits the budget (nginx's 8 KiB default, with room to spare)."""
    for largest in (9, 12_345, 9_999_999):
        n = export_ids_per_request(largest)
        params = [("export_type", "JSON"), ("download_all_tasks", "true")] + [("ids[]", largest)] * n
        line = f"GET /api/projects/123456/export?{httpx.QueryParams(params)} HTTP/1.1"
        assert EXPORT_REQUEST_LINE_BYTES - 250 < len(line) <= EXPORT_REQUEST_LINE_BYTES, (
            largest,
            n,
        )  # fits, not wasteful


def test_a_server_refusing_long_request_lines_gets_smaller_chunks(
    ls_env: LocalLabelStudio, project: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy answering 414 to request lines over 300 bytes: chunks are halved until they pass, same result."""
    clean = pull_project(Settings(), _cfg(project))
    with FlakyProxy(ls_env.url, fail_rate=0.0, max_request_line=300) as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)
        strict = pull_project(Settings(), _cfg(project, export_chunk_size=40, workers=1))
    assert proxy.too_long >= 1
    _assert_same_pull(strict, clean)
