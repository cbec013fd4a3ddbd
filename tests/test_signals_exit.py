"""`kill` of a command that runs servers stops them too: servers run in their own process group, so SIGTERM
to the parent never reaches them, and Python's default SIGTERM ends it without leaving its `with` blocks.
`signals_exit` (used by `lora-pipeline demo`) turns SIGTERM/SIGHUP into SystemExit so the servers stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import os, sys, time
from contextlib import nullcontext
from pathlib import Path
from pipeline.ingest.server import ServerProcess, signals_exit, spawn_server

class Sleeper(ServerProcess):
    port = 0
    def __init__(self):
        self._proc = None
    def start(self):
        cmd = [sys.executable, "-c", "import time; time.sleep(600)"]
        self._proc = spawn_server(cmd, env=dict(os.environ), log_path=Path(sys.argv[1]), cwd=Path.cwd())
        print(self._proc.pid, flush=True)
        return self

with signals_exit() if sys.argv[2] == "guarded" else nullcontext(), Sleeper():
    print("ready", flush=True)
    time.sleep(600)
"""


def _run_and_kill(tmp_path: Path, mode: str, signum: int) -> tuple[int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "server.log"), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    server_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signum)
    return proc.wait(timeout=60), server_pid


def _gone(pid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_servers_of_a_guarded_command(tmp_path: Path, signum: int) -> None:
    code, server = _run_and_kill(tmp_path, "guarded", signum)
    assert code == 128 + signum
    assert _gone(server), f"server {server} still running after the command got signal {signum}"


def test_without_the_guard_the_server_outlives_its_parent(tmp_path: Path) -> None:
    """The failure this guards against, shown: the default SIGTERM leaves the server's group running."""
    code, server = _run_and_kill(tmp_path, "plain", signal.SIGTERM)
    try:
        assert code == -signal.SIGTERM
        assert not _gone(server, within_s=2.0)
    finally:
        os.killpg(server, signal.SIGKILL)
