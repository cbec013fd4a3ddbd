"""`lora-pipeline serve` as a real process for the serving tests: started, waited for, stopped cleanly."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_process(cmd: list[str], env: dict[str, str], port: int, log: Path, *, ready_s: float) -> Iterator[str]:
    """Run `cmd` (a serve command listening on loopback `port`) until /health answers; yield its /v1 URL. On exit
    it must stop on SIGTERM with status 0 or -15 and no traceback in its log."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status says what stopped it
    assert proc.returncode in (0, -15), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
