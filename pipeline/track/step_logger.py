"""Training step metrics reach MLflow from a background thread, so an MLflow outage never stalls training.

`StepLogger(...)` is passed as `train_adapter(on_step=...)`: each call only appends to a bounded buffer.
A sender thread posts batches every `every_s` seconds (or sooner once `every_steps` steps wait); when
MLflow does not answer it keeps the metrics and tries again with backoff (up to `max_backoff_s`). At the
end, `flush(timeout_s)` waits for the buffer to drain — the metrics of a two-minute outage arrive when
MLflow is back — or raises `TrackingUnavailable` with one line naming the URI and what is still buffered.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from mlflow.entities import Metric

from pipeline.track.metric_names import sectioned
from pipeline.track.outage import TrackingUnavailable, outage_message, reachable
from pipeline.track.store import tracking_client
from pipeline.train.results import StepLog

# About 150k steps of metrics: beyond it the oldest are dropped (counted and reported), memory stays bounded.
MAX_BUFFERED = 1_000_000
_BATCH = 1000  # MLflow takes at most 1000 metrics per request


class StepLogger:
    """Buffers step metrics and sends them to an MLflow run from a daemon thread."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        every_steps: int = 25,
        every_s: float = 10.0,
        max_backoff_s: float = 10.0,
        max_buffered: int = MAX_BUFFERED,
        adapter_dir: str | None = None,
    ) -> None:
        self.tracking_uri, self.run_id, self.adapter_dir = tracking_uri, run_id, adapter_dir
        self.every_steps, self.every_s, self.max_backoff_s = every_steps, every_s, max_backoff_s
        self.max_buffered = max_buffered
        self._buffer: deque[Metric] = deque(maxlen=max_buffered)
        self._cond = threading.Condition()
        self._steps_waiting = 0
        self._in_flight = 0
        self._closed = False
        self._stop = threading.Event()
        self._flush_requested = False
        self.dropped = 0
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-step-logger", daemon=True)
        self._thread.start()

    def __call__(self, log: StepLog) -> None:
        now = int(time.time() * 1000)
        values = {
            "train_loss": log.loss,
            "learning_rate": log.learning_rate,
            "grad_norm": log.grad_norm,
            "tokens_per_s": log.tokens_per_s,
            "padding_fraction": log.padding_fraction,
            "eval_loss_step": log.eval_loss,  # NaN (skipped) on steps that did not evaluate
        }
        metrics = [Metric(k, float(v), now, log.step) for k, v in sectioned(values).items() if math.isfinite(v)]
        with self._cond:
            self.dropped += max(0, len(self._buffer) + len(metrics) - self.max_buffered)
            self._buffer.extend(metrics)
            self._steps_waiting += 1
            if self._steps_waiting >= self.every_steps:
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + self._in_flight

    def _take(self) -> list[Metric]:
        with self._cond:
            deadline = time.monotonic() + self.every_s
            while not (self._closed or self._flush_requested or self._steps_waiting >= self.every_steps):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._buffer.popleft() for _ in range(min(_BATCH, len(self._buffer)))]
            self._in_flight = len(batch)
            if not self._buffer:
                self._steps_waiting = 0
            return batch

    def _run(self) -> None:
        client = None
        backoff = 0.5
        while True:
            batch = self._take()
            if batch:
                try:
                    # A health check first: a request to a server that is down sits in MLflow's own retries
                    # (waits up to 120 s), which would hold the metrics back long after the server returned.
                    if not reachable(self.tracking_uri, timeout_s=5.0):
                        raise ConnectionError(f"MLflow at {self.tracking_uri} does not answer its health check")
                    client = client or tracking_client(self.tracking_uri)
                    client.log_batch(self.run_id, metrics=batch)
                    backoff = 0.5
                    with self._cond:
                        self.sent += len(batch)
                        self._in_flight = 0
                        self._cond.notify_all()
                    continue
                except Exception as e:  # MLflow down or erroring: keep the batch, try again later
                    with self._cond:
                        self.failures += 1
                        self.last_error = f"{type(e).__name__}"
                        self._buffer.extendleft(reversed(batch))
                        self._in_flight = 0
                        self._cond.notify_all()
                    # Only close() cuts the backoff short: steps arriving meanwhile must not turn it into a
                    # health check per step.
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            with self._cond:
                if self._closed and not self._buffer:
                    return
                if self._flush_requested and not self._buffer:
                    self._flush_requested = False
                    self._cond.notify_all()

    def flush(self, timeout_s: float = 300.0) -> None:
        """Wait until every buffered metric reached MLflow; `TrackingUnavailable` after `timeout_s` without."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._buffer or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    waiting = len(self._buffer) + self._in_flight
                    raise TrackingUnavailable(
                        outage_message(
                            self.tracking_uri,
                            self.run_id,
                            self.adapter_dir,
                            f"{waiting} step metrics ({self.last_error or 'no answer'} for {timeout_s:.0f} s)",
                        )
                    )
                self._cond.wait(min(left, 0.5))
                self._cond.notify_all()
            self._flush_requested = False

    def close(self) -> None:
        """Stop the sender thread (what is still buffered is dropped: call `flush` first to keep it)."""
        with self._cond:
            self._closed = True
            self._stop.set()
            self._buffer.clear()
            self._cond.notify_all()
        self._thread.join(timeout=5)
