"""An MLflow outage never stalls training: step metrics are buffered and sent from a background thread,
reach MLflow when it is back, or end in one line naming the URI and where the adapter was kept."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.ingest.server import free_port
from pipeline.track.outage import TrackingUnavailable, tracking_outage
from pipeline.track.step_logger import StepLogger
from pipeline.train.results import StepLog
from tests.conftest import start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow


def _step(i: int) -> StepLog:
    return StepLog(step=i, epoch=0, loss=1.0 / i, learning_rate=1e-4, grad_norm=0.5, tokens_per_s=1e3)


def _new_run(uri: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment(f"outage-{time.time_ns()}")).info.run_id


def test_metrics_logged_during_an_outage_arrive_when_mlflow_is_back(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = start_mlflow_server(tmp_path, port)
    try:
        run_id = _new_run(uri)
        steps = StepLogger(uri, run_id, every_steps=10, every_s=0.5, max_backoff_s=1.0)
        for i in range(1, 51):
            steps(_step(i))
        stop_mlflow_server(proc)
        started = time.monotonic()
        for i in range(51, 251):  # training goes on while MLflow is down: every call returns at once
            steps(_step(i))
        logging_while_down_s = time.monotonic() - started
        time.sleep(3)  # the sender keeps trying meanwhile (MLflow's client retries too), and keeps the metrics
        assert steps.pending >= 200 * 5
        proc = start_mlflow_server(tmp_path, port)
        steps.flush(timeout_s=120)
        steps.close()
        history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 251))
        # A synchronous logger would have waited out MLflow's own retries (minutes) on the first call.
        assert logging_while_down_s < 5.0, logging_while_down_s
    finally:
        stop_mlflow_server(proc)


def test_mlflow_that_stays_down_ends_in_one_line_naming_uri_and_adapter(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = start_mlflow_server(tmp_path, port)
    run_id = _new_run(uri)
    stop_mlflow_server(proc)
    adapter = tmp_path / "adapters" / "work" / "adapter"
    steps = StepLogger(uri, run_id, every_steps=5, every_s=0.2, max_backoff_s=0.5, adapter_dir=str(adapter))
    for i in range(1, 21):
        steps(_step(i))
    with pytest.raises(TrackingUnavailable) as e:
        steps.flush(timeout_s=3)
    steps.close()
    message = str(e.value)
    assert "\n" not in message and uri in message and str(adapter) in message and run_id in message
    # The same line for any other MLflow call made while it is down (artifacts, final metrics).
    with pytest.raises(TrackingUnavailable) as e2, tracking_outage(uri, run_id, adapter, "the adapter"):
        MlflowClient(uri).log_param(run_id, "x", "1")
    assert str(adapter) in str(e2.value) and "\n" not in str(e2.value)


def test_other_errors_are_not_disguised_as_an_outage(mlflow_server: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an outage"), tracking_outage(mlflow_server, "r", tmp_path, "x"):
        raise ValueError("not an outage")
