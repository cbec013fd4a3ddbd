"""`lora-pipeline worker`: Prefect's process worker with a warm process beside it (flows/warm_worker.py).

It starts the warm process, waits until its socket answers (the stack is imported), then runs
`prefect worker start --type process` with LORA_PIPELINE_WARM_SOCKET set, so the deployments' command
(`python -m flows.warm_start`) forks each flow run's engine from it. SIGTERM/SIGINT stop the Prefect worker
first, then the warm process (running engines finish and report first). If the warm process cannot start,
the worker runs anyway and every flow run starts cold, as with a plain `prefect worker start`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flows.warm_start import SOCKET_ENV

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


def start_warm_process(socket_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """The warm process, once it listens; None (with the reason on stderr) if it died or never got ready."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.warm_worker", "--socket", str(socket_path)], env=env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not socket_path.exists():
        if proc.poll() is not None:
            print(
                f"lora-pipeline worker: the warm process exited ({proc.returncode}); flow runs start cold",
                file=sys.stderr,
            )
            return None
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            print(
                f"lora-pipeline worker: the warm process was not ready in {READY_TIMEOUT_S:.0f} s; flow runs start cold",
                file=sys.stderr,
            )
            return None
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_worker(pool: str, worker_args: list[str], *, warm: bool = True) -> int:
    """Run the Prefect worker for `pool` until it exits; the warm process lives exactly as long."""
    env = dict(os.environ)
    env.pop(SOCKET_ENV, None)
    warm_proc = None
    directory = Path(tempfile.mkdtemp(prefix="lora-pipeline-warm-")) if warm else None
    if directory is not None:
        socket_path = directory / f"engine-{pool}-{os.getpid()}.sock"
        warm_proc = start_warm_process(socket_path, env)
        if warm_proc is not None:
            env[SOCKET_ENV] = str(socket_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", *worker_args],
        env=env,
    )

    def forward(signum: int, _frame: object) -> None:
        if worker.poll() is None:
            worker.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = worker.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(worker, STOP_TIMEOUT_S)
        if warm_proc is not None:
            _stop(warm_proc, STOP_TIMEOUT_S)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return status
