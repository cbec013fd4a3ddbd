"""An httpx transport that retries Label Studio calls on 429, 5xx and dropped connections, with backoff.

Every client call goes through it (the SDK takes it via `LabelStudio(httpx_client=...)`), so a
flaky proxy or a restarting server costs time, not a failed nightly pull.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger("pipeline.ingest")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# What a restarting server (or its proxy) answers: retried past `retries` for up to `patience_s`.
OUTAGE_STATUSES = frozenset({502, 503, 504})
# Safe to repeat: a GET that failed half-way is simply asked again.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# For other methods (POST creates annotations, PATCH marks tasks) only failures that prove the
# server never acted: the connection was refused, or the server said "slow down / unavailable".
_NEVER_APPLIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one request."""

    retries: int = 5
    backoff_s: float = 0.5  # first wait; doubles per attempt, with jitter
    max_backoff_s: float = 20.0
    # A server that is down (connection refused, 502/503/504) is waited for this long since the
    # first failure of the request, polling every outage_poll_s, even after `retries` ran out:
    # a restart of a minute costs a minute, not a failed pull.
    patience_s: float = 0.0
    outage_poll_s: float = 5.0

    def keep_waiting(self, attempt: int, started: float, outage: bool) -> bool:
        """Whether a request that failed `attempt + 1` times since `started` is tried again."""
        if attempt < self.retries:
            return True
        return outage and time.monotonic() - started < self.patience_s

    def next_wait_s(self, attempt: int, outage: bool, retry_after: str | None = None) -> float:
        if attempt >= self.retries and outage:
            return self.outage_poll_s * (0.5 + random.random() / 2)
        return self.wait_s(min(attempt, self.retries), retry_after)

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)


class RetryTransport(httpx.BaseTransport):
    """Wraps a transport; retries transient failures, then returns the last response or raises the last error."""

    def __init__(self, policy: RetryPolicy, inner: httpx.BaseTransport | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        idempotent = request.method in IDEMPOTENT
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                # Never reached the server: always safe to repeat, and what a restart looks like.
                if not self.policy.keep_waiting(attempt, started, outage=True):
                    raise
                self._note_outage(attempt, request)
                time.sleep(self.policy.next_wait_s(attempt, outage=True))
                attempt += 1
                continue
            except (httpx.ReadError, httpx.ReadTimeout, httpx.WriteError, httpx.RemoteProtocolError):
                # The request may have reached the server: repeat only what is safe to repeat.
                if not idempotent or not self.policy.keep_waiting(attempt, started, outage=False):
                    raise
                time.sleep(self.policy.next_wait_s(attempt, outage=False))
                attempt += 1
                continue
            status = response.status_code
            retryable = status in (RETRY_STATUSES if idempotent else _NEVER_APPLIED_STATUSES)
            outage = status in OUTAGE_STATUSES and (idempotent or status == 503)
            if not retryable or not self.policy.keep_waiting(attempt, started, outage=outage):
                return response
            if outage:
                self._note_outage(attempt, request)
            retry_after = response.headers.get("Retry-After")
            response.close()
            time.sleep(self.policy.next_wait_s(attempt, outage, retry_after))
            attempt += 1

    def _note_outage(self, attempt: int, request: httpx.Request) -> None:
        if attempt == self.policy.retries and self.policy.patience_s > 0:
            log.warning(
                "%s://%s does not answer after %d retries; waiting up to %.0f s for it (labelstudio.outage_patience_s)",
                request.url.scheme,
                request.url.netloc.decode(),
                attempt,
                self.policy.patience_s,
            )

    def close(self) -> None:
        self.inner.close()


def retrying_client(
    *, timeout_s: float, policy: RetryPolicy, headers: dict[str, str] | None = None, base_url: str = ""
) -> httpx.Client:
    """An httpx client with per-request timeouts and the retrying transport."""
    return httpx.Client(
        transport=RetryTransport(policy),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        headers=headers,
        base_url=base_url,
    )
