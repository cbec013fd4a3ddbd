"""A warm process per worker: the pipeline's stack imported once, each flow run's engine forked from it.

Prefect's process worker starts a fresh interpreter for every flow run, which then imports Prefect, torch,
transformers, PEFT, MLflow and the validation stack: 3 s for an ingest run and 7-9 s for a train run on
this project's 2-core CI machine, every time (bench/results/orchestration_overhead.md). `lora-pipeline
worker` starts this process next to `prefect worker start`; the deployments' command
(`python -m flows.warm_start`) asks it for an engine, and it forks one that already has everything imported.

Safety rules (docs/orchestration.md, "Warm workers"):
- Nothing runs before a fork but imports: no torch op, no CUDA, no thread, no client. The engine sets up
  everything it uses in the child, as in a fresh process.
- Changed code: project modules imported here are compared (mtime, size) with the files on disk at every
  request; after an upgrade the request is answered "cold" and this process re-executes itself.
- Environment read at import time: a run whose environment differs from this process's in a variable
  that is not read late (Prefect's, the pipeline's, the endpoints', CUDA_VISIBLE_DEVICES) runs cold, with
  the differing names in its log.
- The child dies with the stand-in: a SIGKILL of the flow-run process closes the socket and the engine
  kills itself, as if it had been that process.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

PROJECT_PACKAGES = frozenset({"pipeline", "flows", "schemas"})  # wherever installed (checkout or site-packages)
# What a flow run of either pool imports: both flows, the tasks' lazy imports (the validation stack,
# training, evaluation, tracking) and Prefect's engine modules.
DEFAULT_PRELOAD: tuple[str, ...] = (
    "prefect.flow_engine",
    "prefect.deployments.steps",
    "flows.ingest_flow",
    "flows.train_flow",
    "flows.sweep_flow",
    "pipeline.validate.prepare",
    "pipeline.validate.feedback",
    "pipeline.validate.report",
    "pipeline.validate.snapshot",
    "pipeline.validate.visible_text",
    "pipeline.ingest.review_views",
    "pipeline.serve.canary",
    "prefect.artifacts",
)
# Environment variables read when they are used, not when a module is imported: a run may differ here.
LATE_READ_PREFIXES: tuple[str, ...] = (
    "PREFECT_",
    "LORA_PIPELINE_",
    "LABEL_STUDIO_",
    "MLFLOW_",
    "LLM_JUDGE_",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
)
# ... except these: Prefect configures logging when it is imported.
IMPORT_TIME_PREFIXES: tuple[str, ...] = ("PREFECT_LOGGING_",)
# Set by the shell, not read by anything a flow run imports.
SHELL_VARIABLES = frozenset({"_", "PWD", "OLDPWD", "SHLVL"})
POLL_S = 0.05
REQUEST_TIMEOUT_S = 10.0
ENGINE = "prefect.engine"  # what `python -m` would run; tests give a stand-in script


def code_state() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every imported module file of this project (its packages, and this file as
    `__main__`), wherever installed: a checkout or site-packages."""
    state: dict[str, tuple[int, int]] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or (name.partition(".")[0] not in PROJECT_PACKAGES and name != "__main__"):
            continue
        try:
            st = os.stat(path)
        except OSError:
            state[path] = (-1, -1)
            continue
        state[path] = (st.st_mtime_ns, st.st_size)
    return state


def env_differences(own: dict[str, str], requested: dict[str, str]) -> list[str]:
    """Names whose values differ (or exist on one side only), less those read late."""
    names = set(own) | set(requested)
    return sorted(
        n
        for n in names
        if own.get(n) != requested.get(n)
        and (n.startswith(IMPORT_TIME_PREFIXES) or not n.startswith(LATE_READ_PREFIXES))
        and n not in SHELL_VARIABLES
    )


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"request cut short ({len(data)} of {n} bytes)")
        data.extend(chunk)
    return bytes(data)


def receive_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The stand-in's request and its three stdio descriptors."""
    head, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
    if len(head) != 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("not a flow-run request (no header or no stdio descriptors)")
    try:
        (length,) = struct.unpack("!I", head)
        request = json.loads(_recv_exact(conn, length))
        if not (
            isinstance(request, dict)
            and isinstance(request.get("argv"), list)
            and isinstance(request.get("cwd"), str)
            and isinstance(request.get("env"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in request["env"].items())
        ):
            raise ValueError("a flow-run request is an object with argv (list), cwd (str) and env (str -> str)")
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        raise
    return request, list(fds)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the stand-in is gone; its engine notices on its own
        conn.sendall(json.dumps(message).encode() + b"\n")


def _die_with_stand_in(conn: socket.socket) -> None:
    """In the engine: block on the stand-in's socket; when it closes (the flow-run process died), die too."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _name_this_process(name: bytes) -> None:
    """`ps -o comm`/`top` show the engine as such, not as another warm process (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME


def run_engine(
    conn: socket.socket,
    fds: list[int],
    request: dict[str, Any],
    imported_env: dict[str, str],
    engine: str = ENGINE,
) -> NoReturn:
    """The forked child: take over the stand-in's stdio, environment and directory, and run Prefect's engine
    as `python -m prefect.engine` would. `imported_env`: variables the imports set (a fresh process would have
    them too), unless the run sets them. Never returns into the warm process's code."""
    status = 1
    try:
        _name_this_process(b"flow-run-engine")
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update({**imported_env, **request["env"]})
        os.chdir(request["cwd"])
        import prefect.context

        prefect.context.refresh_global_settings_context()  # Prefect's settings from this run's environment
        threading.Thread(target=_die_with_stand_in, args=(conn,), name="stand-in-watch", daemon=True).start()
        sys.argv = [engine, *request["argv"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if engine.endswith(".py"):
                runpy.run_path(engine, run_name="__main__")
            else:
                sys.modules.pop(engine, None)  # run it as __main__, as `python -m` does
                runpy.run_module(engine, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()  # what the interpreter would run at exit (Prefect's log flush among them)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


@dataclass
class WarmProcess:
    socket_path: Path
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    engine: str = ENGINE
    env: dict[str, str] = field(default_factory=dict)  # as given to this process, before any import
    imported_env: dict[str, str] = field(default_factory=dict)  # what the imports added or changed
    code: dict[str, tuple[int, int]] = field(default_factory=dict)
    engines: dict[int, socket.socket] = field(default_factory=dict)
    stopping: bool = False
    restart: bool = False

    def load(self) -> float:
        start = time.monotonic()
        self.env = dict(os.environ)
        for name in self.preload:
            importlib.import_module(name)
        self.imported_env = {k: v for k, v in os.environ.items() if self.env.get(k) != v}
        self.code = code_state()
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if threads:  # a fork copies only the forking thread: state those threads hold would be torn
            raise RuntimeError(f"importing {self.preload} started threads {threads}; cannot fork engines safely")
        return time.monotonic() - start

    def cold_reason(self, request: dict[str, Any]) -> str | None:
        if code_state() != self.code:
            self.restart = True
            return "the project's code changed since the warm process started; it restarts"
        # Variables the imports set (an MLflow session id, pyarrow's timezone flag) differ in a worker that has
        # imported the same modules (Prefect's worker loads a flow for its crash hooks): not a different setup.
        differing = [n for n in env_differences(self.env, request.get("env", {})) if n not in self.imported_env]
        if differing:
            return f"environment differs from the warm process's in {', '.join(differing[:8])}"
        return None

    def handle(self, conn: socket.socket, listener: socket.socket) -> None:
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)  # a peer that connects and says nothing must not block the rest
            request, fds = receive_request(conn)
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            print(f"warm worker: bad request: {exc}", file=sys.stderr, flush=True)
            conn.close()
            return
        reason = self.cold_reason(request)
        if reason is not None:
            for fd in fds:
                os.close(fd)
            _send(conn, {"cold": reason})
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: this run starts cold, the warm process lives on
            for fd in fds:
                os.close(fd)
            _send(conn, {"cold": f"the warm process could not fork ({exc})"})
            conn.close()
            return
        if pid == 0:
            listener.close()
            for other in self.engines.values():
                other.close()
            run_engine(conn, fds, request, self.imported_env, self.engine)
        for fd in fds:
            os.close(fd)
        self.engines[pid] = conn
        _send(conn, {"pid": pid})

    def reap(self) -> None:
        while self.engines:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.engines.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            _send(conn, {"exit": code})
            conn.close()

    def serve(self) -> None:
        """Answer requests until stopped (then drain: running engines report their status first) or until the
        code changed and no engine is running (then the caller re-executes this process)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.socket_path.with_name(f".{self.socket_path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(staging))
        os.chmod(staging, 0o600)  # only this user's processes may ask for an engine
        listener.listen(16)
        os.replace(staging, self.socket_path)  # appears only when ready to answer
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        try:
            while not self.stopping and not (self.restart and not self.engines):
                for _key, _events in selector.select(timeout=POLL_S):
                    conn, _ = listener.accept()
                    self.handle(conn, listener)
                self.reap()
        finally:
            selector.close()
            listener.close()
            self.socket_path.unlink(missing_ok=True)
        while self.engines:  # stopping: new runs start cold; running engines still report how they ended
            self.reap()
            time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
    parser.add_argument("--preload", nargs="*", default=list(DEFAULT_PRELOAD), help="modules to import once")
    parser.add_argument("--engine", default=ENGINE, help=argparse.SUPPRESS)  # module or .py path (tests)
    args = parser.parse_args(argv)
    warm = WarmProcess(args.socket, tuple(args.preload), args.engine)

    def stop(_signum: int, _frame: object) -> None:
        warm.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    took = warm.load()
    print(f"warm worker: {len(warm.preload)} modules imported in {took:.1f} s; listening on {args.socket}", flush=True)
    warm.serve()
    if warm.restart and not warm.stopping:
        print("warm worker: the project's code changed; restarting", flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "flows.warm_worker", *sys.argv[1:]])
    # Engines still running keep going (they finish their flow runs); their stand-ins learn the status by pid.
    return 0


if __name__ == "__main__":
    sys.exit(main())
