"""A Label Studio outage is waited out: refused connections and 502/503/504 are retried past `retries`
for `outage_patience_s`, while configuration errors still fail at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import (
    LabelStudioError,
    LabelStudioUnavailable,
    connect,
    ensure_project,
    import_tasks,
    submit_annotation,
)
from pipeline.ingest.http_retry import RetryPolicy, RetryTransport
from pipeline.ingest.pull import Pull, pull_project
from pipeline.ingest.server import LocalLabelStudio
from tests.test_ingest_resilience import CATS, FlakyProxy, _assert_same_pull

OUTAGE_S = 62.0


def _client(handler: object, policy: RetryPolicy) -> httpx.Client:
    return httpx.Client(transport=RetryTransport(policy, httpx.MockTransport(handler)))  # type: ignore[arg-type]


def test_refused_connections_are_retried_past_retries_within_patience() -> None:
    """The server refuses connections for 0.6 s: 2 retries alone would give up, the patience rides it out."""
    up_at = time.monotonic() + 0.6
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if time.monotonic() < up_at:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"ok": True})

    policy = RetryPolicy(retries=2, backoff_s=0.01, patience_s=5.0, outage_poll_s=0.05)
    assert _client(handler, policy).get("http://ls/api/tasks").status_code == 200
    assert len(calls) > 3  # more tries than `retries` allows


@pytest.mark.parametrize("status", [502, 503, 504])
def test_outage_statuses_are_waited_out_but_not_forever(status: int) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(status)
        return httpx.Response(status)

    policy = RetryPolicy(retries=1, backoff_s=0.01, patience_s=0.4, outage_poll_s=0.05)
    started = time.monotonic()
    assert _client(handler, policy).get("http://ls/api/tasks").status_code == status
    assert 0.4 <= time.monotonic() - started < 3.0
    assert len(calls) > 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
def test_errors_that_are_not_outages_are_not_waited_for(status: int) -> None:
    """A wrong token, a missing project or a server bug: at most `retries` more tries, no patience."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(status)
        return httpx.Response(status)

    policy = RetryPolicy(retries=2, backoff_s=0.0, patience_s=60.0, outage_poll_s=0.05)
    started = time.monotonic()
    assert _client(handler, policy).get("http://ls/api/tasks").status_code == status
    assert time.monotonic() - started < 5.0
    assert len(calls) == (3 if status == 500 else 1)


def test_a_post_is_not_repeated_after_a_502_the_server_may_have_applied() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(502)

    policy = RetryPolicy(retries=2, backoff_s=0.0, patience_s=60.0, outage_poll_s=0.05)
    assert _client(handler, policy).post("http://ls/api/annotations").status_code == 502
    assert calls == ["POST"]


def test_connect_to_a_server_that_stays_down_is_unavailable_not_a_config_error(tmp_path: Path) -> None:
    """Retryable by the flow (LabelStudioUnavailable), one line naming the URL."""
    from pipeline.ingest.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioUnavailable) as e:
        connect(url, "x" * 40, policy=RetryPolicy(retries=1, backoff_s=0.01, patience_s=0.3, outage_poll_s=0.05))
    assert url in str(e.value) and "\n" not in str(e.value)


def test_a_rejected_token_is_a_config_error_at_once(label_studio: LocalLabelStudio) -> None:
    started = time.monotonic()
    with pytest.raises(LabelStudioError) as e:
        connect(label_studio.url, "0" * 40, policy=RetryPolicy(retries=3, backoff_s=0.5, patience_s=60.0))
    assert not isinstance(e.value, LabelStudioUnavailable)
    assert "rejected the API key" in str(e.value)
    assert time.monotonic() - started < 10.0


def test_the_flow_retries_a_label_studio_that_stayed_down_but_not_a_config_error() -> None:
    from prefect.states import Failed

    from flows.retries import retry_transient

    def failed(exc: Exception) -> object:
        return Failed(data=exc)

    assert retry_transient(None, None, failed(LabelStudioUnavailable("down")))  # type: ignore[arg-type]
    assert not retry_transient(None, None, failed(LabelStudioError("token")))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def outage_project(label_studio: LocalLabelStudio) -> int:
    client = connect(label_studio.url, label_studio.token)
    ref = ensure_project(client, "outage-test", CATS)
    ids = import_tasks(client, ref.id, [{"prompt": f"Q{i}?"} for i in range(30)])
    for i, tid in enumerate(ids[:24]):
        submit_annotation(client, tid, f"A{i}.", CATS[i % 2])
    return ref.id


@pytest.mark.slow
def test_pull_rides_through_a_label_studio_restart_of_over_a_minute(
    label_studio: LocalLabelStudio, outage_project: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Label Studio is stopped mid-pull, stays down 62 s, then starts again: the pull completes and equals a
    clean one. Behind a proxy that answers 502 while it is down (as nginx does), and a slow one so that the
    outage lands mid-pull."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    cfg = LabelStudioConfig(
        project_id=outage_project,
        categories=CATS,
        export_chunk_size=2,
        workers=1,
        backoff_s=0.05,
        retries=2,
        outage_patience_s=240.0,
    )
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    clean = pull_project(Settings(), cfg, full=True)
    result: dict[str, Pull | BaseException] = {}
    with FlakyProxy(label_studio.url, fail_rate=0.0, stall_rate=1.0, stall_s=0.25) as proxy:
        monkeypatch.setenv("LABEL_STUDIO_URL", proxy.url)

        def pull() -> None:
            try:
                result["pull"] = pull_project(Settings(), cfg, full=True)
            except BaseException as e:
                result["error"] = e

        worker = threading.Thread(target=pull)
        worker.start()
        deadline = time.monotonic() + 60
        while proxy.requests < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_alive(), "the pull ended before the outage; slow the proxy down"
        label_studio.stop()
        down_since = time.monotonic()
        time.sleep(OUTAGE_S)
        assert worker.is_alive(), f"the pull gave up during the outage: {result.get('error')!r}"
        label_studio.start()
        outage = time.monotonic() - down_since
        worker.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert outage >= 60 and proxy.upstream_down >= 3
    got = result["pull"]
    assert isinstance(got, Pull)
    _assert_same_pull(got, clean)
