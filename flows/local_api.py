"""A Prefect API server for one `lora-pipeline run` / `demo` process, that dies with it.

Without PREFECT_API_URL, Prefect starts a temporary API server in a subprocess; a killed run left that
server running (and the demo failed once because its start took over Prefect's 20 s default on a busy
machine). This module starts the same server (uvicorn over `prefect.server.api.server:create_app`) itself,
with a health wait of minutes and progress on stdout, and asks the kernel to SIGTERM it when its parent
dies (PR_SET_PDEATHSIG), so no kill of the run leaves it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.ingest.server import ServerProcess, free_port, wait_healthy

_PR_SET_PDEATHSIG = 1


class PrefectStartError(RuntimeError):
    """The run's own Prefect API did not come up; the message holds its log tail."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: the kernel sends SIGTERM when the process that started it dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class LocalPrefectServer(ServerProcess):
    """Prefect's API (no UI) on loopback, its database under `home` (PREFECT_HOME)."""

    home: Path
    port: int = 0
    startup_timeout_s: float = 300.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        return Path(self.home) / "api-server.log"

    def start(self) -> LocalPrefectServer:
        self.home = Path(self.home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )
        wait_healthy(
            self._proc,
            self.url,
            self.startup_timeout_s,
            self.log_path,
            "the Prefect API",
            health_path="/api/health",
            ready=lambda r: r.status_code == 200,
            error=PrefectStartError,
            progress_every_s=15.0,
        )
        return self


def _api_configured() -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect" in sys.modules:  # e.g. inside prefect_test_harness, which sets it in a settings context
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value())
    return False


@contextmanager
def prefect_api(home: str | Path | None = None) -> Iterator[str | None]:
    """Use PREFECT_API_URL when one is configured; otherwise run a `LocalPrefectServer` for the block (call
    before importing the flows: Prefect reads its settings on import). Yields the API URL it started, or None."""
    if _api_configured():
        yield None
        return
    root = Path(home or os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    print("starting a Prefect API for this run ...", flush=True)
    with LocalPrefectServer(home=root) as server:
        os.environ["PREFECT_API_URL"] = server.api_url
        try:
            yield server.api_url
        finally:
            _drain_prefect_workers()
            os.environ.pop("PREFECT_API_URL", None)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still buffers before the API they go to stops."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for drain in (lambda: APILogWorker.instance().drain(), EventsWorker.drain_all):
        with contextlib.suppress(RuntimeError):  # the worker was never started
            drain()
