"""The flow-run command of the deployments: Prefect's engine, forked from the worker's warm process if it has one.

prefect.yaml's job variables run `python -m flows.warm_start` for every flow run. A worker started by
`lora-pipeline worker` keeps a warm process (flows/warm_worker.py) with the pipeline's stack imported and
exports its socket as LORA_PIPELINE_WARM_SOCKET. This command hands the flow run to it: its environment,
working directory and stdin/stdout/stderr. The warm process forks the engine from there, and this process
stands in for it:
- it ends with the engine's exit status (or dies by the engine's signal);
- SIGTERM/SIGINT/SIGHUP it receives (Prefect's cancellation) are forwarded to the engine;
- if it is killed (SIGKILL of the flow-run process), the engine notices the closed socket and kills itself.
Without a warm process (a plain `prefect worker start`, the socket gone, changed code, a different
environment) it replaces itself with `python -m prefect.engine`, exactly the engine Prefect would start.

It imports only the standard library: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
from typing import Any, NoReturn

SOCKET_ENV = "LORA_PIPELINE_WARM_SOCKET"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How often the stand-in checks that the engine is still there when the warm process went away.
LIVENESS_POLL_S = 1.0


def cold_start(reason: str | None) -> NoReturn:
    """Become Prefect's own engine process (same pid, same stdio), saying why when there was a warm process."""
    if reason:
        print(f"lora-pipeline: starting the flow run's engine cold ({reason})", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[1:]])


def send_request(sock: socket.socket, request: dict[str, Any]) -> None:
    """A length-prefixed JSON request, with this process's stdin/stdout/stderr passed along (SCM_RIGHTS)."""
    payload = json.dumps(request).encode()
    socket.send_fds(sock, [struct.pack("!I", len(payload))], [0, 1, 2])
    sock.sendall(payload)


def _read_line(sock: socket.socket, buffer: bytearray, pid: int | None) -> dict[str, Any] | None:
    """The next JSON line from the warm process; None when it closed the socket, or when it went away and
    the engine `pid` is gone too (nobody is left to report its exit status)."""
    while b"\n" not in buffer:
        ready, _, _ = select.select([sock], [], [], LIVENESS_POLL_S)
        if not ready:
            if pid is not None and not _alive(pid):
                return None
            continue
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_like(status: int) -> NoReturn:
    """End as the engine ended: its exit code, or death by the same signal (a negative status)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if status < 0:
        if -status not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot have handlers
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if 0 <= status < 256 else 1)


def main() -> NoReturn:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        cold_start(None)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    buffer = bytearray()
    try:
        sock.connect(path)
        send_request(sock, {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)})
        reply = _read_line(sock, buffer, None)
    except OSError as exc:
        cold_start(f"no warm process at {path}: {exc}")
    if reply is None:
        cold_start(f"the warm process at {path} closed the connection")
    if "cold" in reply:
        cold_start(str(reply["cold"]))
    pid = int(reply["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    done = _read_line(sock, buffer, pid)
    if done is None:
        print(
            f"lora-pipeline: the warm process went away; engine pid {pid} ended with an unknown status",
            file=sys.stderr,
            flush=True,
        )
        _exit_like(1)
    _exit_like(int(done["exit"]))


if __name__ == "__main__":
    main()
