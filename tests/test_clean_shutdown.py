"""Clean shutdown: a killed `lora-pipeline run` leaves no Prefect API server behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from pipeline.ingest.server import free_port

pytestmark = pytest.mark.slow


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sigkilled_run_leaves_no_prefect_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The run waits for a Label Studio that is down (outage patience), is SIGKILLed mid-flow, and its own
    Prefect API server exits with it: no process of the run survives, its port refuses connections."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"labelstudio": {"outage_patience_s": 600}}))
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}",
        "LABEL_STUDIO_API_KEY": "a" * 40,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "run.log"
    lora = Path(sys.executable).parent / "lora-pipeline"
    args = ["run", "--config", str(cfg), "--work-dir", str(tmp_path / "w"), "--base-model", str(tiny_model_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen([str(lora), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: b"Beginning flow run" in log.read_bytes(), 300, "the flow to start")
        children = psutil.Process(proc.pid).children(recursive=True)
        servers = [c for c in children if "prefect.server.api.server:create_app" in " ".join(c.cmdline())]
        assert len(servers) == 1, [c.cmdline() for c in children]
        port = int(servers[0].cmdline()[servers[0].cmdline().index("--port") + 1])
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200
        time.sleep(2)  # mid-pull: waiting for Label Studio
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 60, "exit")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
