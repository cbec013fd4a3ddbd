"""Label Studio webhooks in, Prefect events out: self-hosted Prefect has no webhook endpoint.

Label Studio POSTs each annotation change to `/label-studio`; the receiver checks the shared secret,
parses the body (pipeline.ingest.webhooks) and debounces per project, then emits one
`lora-pipeline.annotations.changed` event for resource `label-studio.project.<id>`, which a
deployment trigger in prefect.yaml turns into an ingest flow run. Webhooks are hints (the pull
reconciles by watermark): a lost one delays a run, garbage gets a 4xx, nothing crashes the receiver.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self

from prefect.events import Event, get_events_client
from prefect.settings import get_current_settings

from pipeline.ingest.webhooks import SECRET_HEADER, AnnotationChange, check_secret, parse_webhook

log = logging.getLogger(__name__)

EVENT_NAME = "lora-pipeline.annotations.changed"
WEBHOOK_PATH = "/label-studio"
MAX_BODY_BYTES = 1024 * 1024
MAX_TASK_IDS = 1000  # per summary; the pull finds every change anyway

Emit = Callable[[int, dict[str, Any]], None]


def resource_id(project_id: int) -> str:
    """The Prefect resource id of a Label Studio project (what the deployment trigger matches)."""
    return f"label-studio.project.{project_id}"


@dataclass
class _Pending:
    first_mono: float
    last_mono: float
    first_at: datetime
    last_at: datetime
    actions: Counter[str] = field(default_factory=Counter)
    task_ids: set[int] = field(default_factory=set)
    truncated: bool = False
    changes: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "actions": dict(sorted(self.actions.items())),
            "task_ids": sorted(self.task_ids),
            "task_ids_truncated": self.truncated,
            "changes": self.changes,
            "first_at": self.first_at.isoformat(),
            "last_at": self.last_at.isoformat(),
        }


class Debouncer:
    """Per project: emit one summary `quiet_s` after the last change, at most `max_wait_s` after the first."""

    def __init__(self, quiet_s: float, max_wait_s: float, emit: Emit) -> None:
        if quiet_s <= 0:
            raise ValueError(f"quiet_s must be > 0 seconds, got {quiet_s}")
        if max_wait_s < quiet_s:
            raise ValueError(f"max_wait_s ({max_wait_s}) must be >= quiet_s ({quiet_s})")
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._emit = emit
        self._pending: dict[int, _Pending] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="webhook-debouncer", daemon=True)
        self._thread.start()

    def add(self, change: AnnotationChange) -> None:
        """Record a change; its project's summary goes out when the project has been quiet long enough."""
        now_mono, now = time.monotonic(), datetime.now(UTC)
        with self._cond:
            if self._closed:
                raise RuntimeError("the debouncer is closed")
            p = self._pending.get(change.project_id)
            if p is None:
                p = self._pending[change.project_id] = _Pending(now_mono, now_mono, now, now)
            p.last_mono, p.last_at = now_mono, now
            p.actions[change.action] += 1
            p.changes += 1
            for tid in change.task_ids:
                if len(p.task_ids) >= MAX_TASK_IDS:
                    p.truncated = True
                    break
                p.task_ids.add(tid)
            self._cond.notify()

    def _due(self, p: _Pending) -> float:
        return min(p.last_mono + self.quiet_s, p.first_mono + self.max_wait_s)

    def _take(self, due_by: float | None) -> list[tuple[int, _Pending]]:
        """Remove and return the pending summaries due by `due_by` (all if None); caller holds the lock."""
        ready = [pid for pid, p in self._pending.items() if due_by is None or self._due(p) <= due_by]
        return [(pid, self._pending.pop(pid)) for pid in sorted(ready)]

    def _send(self, batch: list[tuple[int, _Pending]]) -> None:
        for project_id, p in batch:
            try:
                self._emit(project_id, p.summary())
            except Exception:
                # A lost hint only delays the next pull; the receiver must keep serving.
                log.exception("emitting the summary of project %s failed; the next change will retry", project_id)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if any(self._due(p) <= now for p in self._pending.values()):
                        break
                    wait = min((self._due(p) for p in self._pending.values()), default=now + 3600) - now
                    self._cond.wait(timeout=wait)
                if self._closed:
                    return
                batch = self._take(time.monotonic())
            self._send(batch)  # outside the lock: emitting may take seconds

    def flush(self) -> None:
        """Emit every pending summary now."""
        with self._cond:
            batch = self._take(None)
        self._send(batch)

    def close(self) -> None:
        """Stop the timer and emit what is pending, so nothing accepted is lost on shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.flush()


async def _send_confirmed(event: Event) -> None:
    # Our own short-lived client rather than `emit_event`: that one hands the event to a process-wide
    # background worker, which only logs a failure, and flushing it means stopping it for every user in
    # the process. Checkpointing after each event makes the server confirm receipt (a websocket ping
    # answered after the event frame); a server that stays unreachable raises.
    async with get_events_client(reconnection_attempts=3, checkpoint_every=1) as client:
        await client.emit(event)


def emit_prefect_event(project_id: int, summary: dict[str, Any]) -> None:
    """Send the project's `lora-pipeline.annotations.changed` event; returns once the Prefect API has it."""
    event = Event(
        event=EVENT_NAME,
        resource={
            "prefect.resource.id": resource_id(project_id),
            "prefect.resource.name": f"Label Studio project {project_id}",
        },
        payload=summary,
    )
    asyncio.run(_send_confirmed(event))
    log.info("emitted %s event %s for project %s: %s", EVENT_NAME, event.id, project_id, summary.get("actions"))


def check_prefect_api() -> None:
    """Refuse to start without a Prefect API: events would go to a throwaway ephemeral server."""
    if not get_current_settings().api.url:
        raise ValueError(
            "PREFECT_API_URL is not set: the events would go to a temporary in-process server that no trigger "
            "watches; set it to the Prefect server of the deployments, e.g. http://127.0.0.1:4200/api"
        )


class _Server(ThreadingHTTPServer):
    # server_close() joins the request threads (each bounded by the socket timeout), so no change
    # arrives at the debouncer after it was closed.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], secret: str, debouncer: Debouncer) -> None:
        self.secret = secret.encode("ascii")
        self.debouncer = debouncer
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds per socket read: a stalled client cannot hold a thread forever
    server_version = "lora-pipeline-webhooks"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _reply(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _discard(self, length: int) -> None:
        # Read an unwanted body before answering, so the client sees our answer instead of a reset.
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._reply(411, "Content-Length required")
            return None
        if not raw.strip().isdigit():
            self._reply(400, "invalid Content-Length")
            return None
        return int(raw)

    def _authorized(self) -> bool:
        given = self.headers.get(SECRET_HEADER)
        return given is not None and hmac.compare_digest(given.encode("latin-1"), self.server.secret)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._reply(200, "ok")
        elif self.path == WEBHOOK_PATH:
            self._reply(405, "method not allowed", {"Allow": "POST"})
        else:
            self._reply(404, "not found")

    def do_POST(self) -> None:
        if self.path != WEBHOOK_PATH:
            code, allow = (405, {"Allow": "GET"}) if self.path == "/health" else (404, None)
            length = self._content_length_quiet()
            if length is not None and length <= MAX_BODY_BYTES:
                self._discard(length)
            self._reply(code, "method not allowed" if code == 405 else "not found", allow)
            return
        length = self._content_length()
        if length is None:
            return
        if length > MAX_BODY_BYTES:
            if length <= 8 * MAX_BODY_BYTES:
                self._discard(length)
            self._reply(413, f"body over {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        if not self._authorized():
            log.warning("rejected a webhook from %s: missing or wrong %s", self.client_address[0], SECRET_HEADER)
            self._reply(401, f"missing or wrong {SECRET_HEADER}")
            return
        if len(body) < length:
            self._reply(400, "body shorter than Content-Length")
            return
        try:
            change = parse_webhook(body)
        except ValueError as e:
            log.warning("rejected a webhook from %s: %s", self.client_address[0], e)
            self._reply(400, str(e))
            return
        if change is None:
            self._reply(200, "ignored")
            return
        self.server.debouncer.add(change)
        log.debug("accepted %s for project %s (%d tasks)", change.action, change.project_id, len(change.task_ids))
        self._reply(202, "accepted")

    def _content_length_quiet(self) -> int | None:
        raw = self.headers.get("Content-Length", "")
        return int(raw) if raw.strip().isdigit() else None

    def _not_allowed(self) -> None:
        allow = {"/health": "GET", WEBHOOK_PATH: "POST"}.get(self.path)
        if allow:
            self._reply(405, "method not allowed", {"Allow": allow})
        else:
            self._reply(404, "not found")

    do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _not_allowed


@dataclass
class RunningReceiver:
    """A receiver serving in a background thread; `stop()` shuts it down and flushes the debouncer."""

    server: _Server
    thread: threading.Thread
    debouncer: Debouncer

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def webhook_url(self) -> str:
        """The URL to register in Label Studio."""
        return self.url + WEBHOOK_PATH

    def stop(self) -> None:
        """Stop taking requests, then emit everything pending."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.debouncer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_in_thread(
    host: str,
    port: int,
    secret: str,
    quiet_s: float = 600.0,
    max_wait_s: float = 1800.0,
    emit: Emit = emit_prefect_event,
) -> RunningReceiver:
    """Start the receiver on `host:port` (0: a free port) in a background thread."""
    check_secret(secret)
    if emit is emit_prefect_event:
        check_prefect_api()
    debouncer = Debouncer(quiet_s, max_wait_s, emit)
    try:
        server = _Server((host, port), secret, debouncer)
    except BaseException:
        debouncer.close()
        raise
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    return RunningReceiver(server=server, thread=thread, debouncer=debouncer)


def serve(
    host: str,
    port: int,
    secret: str,
    quiet_s: float = 600.0,
    max_wait_s: float = 1800.0,
    emit: Emit = emit_prefect_event,
) -> None:
    """Serve until SIGTERM or SIGINT, then flush what is pending and return."""
    receiver = start_in_thread(host, port, secret, quiet_s=quiet_s, max_wait_s=max_wait_s, emit=emit)
    log.info(
        "webhook receiver on %s (quiet %.0fs, at most %.0fs after the first change)",
        receiver.webhook_url,
        quiet_s,
        max_wait_s,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        while not stop.wait(timeout=1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("webhook receiver stopping; emitting what is pending")
        receiver.stop()
