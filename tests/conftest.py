"""Session fixtures: the offline tiny model, a real Label Studio server, a real MLflow server, Prefect's harness."""

from __future__ import annotations

import os

# Before anything imports transformers/prefect: no hub, no telemetry, quiet pandera.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from label_studio_sdk import LabelStudio

from pipeline.demo.sample_data import sample_records
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.ingest.client import connect
from pipeline.ingest.server import LocalLabelStudio, free_port


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's offline tiny base model, built once per session (same code as `lora-pipeline tiny-model`)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), pretrain_steps=300, seed=0)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """A real Label Studio server on loopback, started once per session (migrations take about a minute)."""
    server = LocalLabelStudio(data_dir=tmp_path_factory.mktemp("labelstudio"))
    with server:
        yield server


@pytest.fixture
def ls_env(label_studio: LocalLabelStudio, monkeypatch: pytest.MonkeyPatch) -> LocalLabelStudio:
    """The session's Label Studio, its URL and token set in the environment as the CLI and the flows read them."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    return label_studio


@pytest.fixture
def ls_client(ls_env: LocalLabelStudio) -> LabelStudio:
    """A client of the session's Label Studio (its URL and token also in the environment, as `ls_env`)."""
    return connect(ls_env.url, ls_env.token)


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    """A real `mlflow server` (sqlite backend under `root`, proxied artifacts) on loopback `port`, healthy."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    with (root / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                str(mlflow_bin),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited early:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_mlflow_server(proc)
            raise RuntimeError(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server of `start_mlflow_server` and its workers (its process group)."""
    from pipeline.ingest.server import stop_server

    stop_server(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on loopback; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start_mlflow_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(proc)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's temporary SQLite API server for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_records(n: int = 48, seed: int = 0) -> pd.DataFrame:
    """PairRecords built straight from the packaged sample pairs (no Label Studio needed)."""
    return sample_records(n, seed=seed)
