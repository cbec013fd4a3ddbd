"""The warm process (flows/warm_worker.py) and the flow-run command (flows/warm_start.py), as real processes.

The engine a warm process forks is a stub here (tests/warm_engine_stub.py) so that signals, exit statuses and
kills can be checked in seconds; the real Prefect engine runs through it in tests/test_orchestration.py
(placement, no-change run, webhook trigger, SIGKILL of the forked engine and resume) and below (its error
path, warm and cold).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.warm_start import SOCKET_ENV, send_request
from flows.warm_worker import env_differences

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).with_name("warm_engine_stub.py")
COLD = "starting the flow run's engine cold"


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@contextmanager
def warm_process(
    tmp_path: Path, *, engine: str | None = str(STUB), preload: tuple[str, ...] = ("json",)
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "warm" / "engine.sock"
    cmd = [sys.executable, "-m", "flows.warm_worker", "--socket", str(sock), "--preload", *preload]
    if engine:
        cmd += ["--engine", engine]
    log = (tmp_path / "warm.log").open("wb")
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("the warm process's socket", sock.exists, 120)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def _stand_in(sock: Path | None, *args: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    extra = {SOCKET_ENV: str(sock)} if sock else {}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.warm_start", *args],
        env=_env(**extra, **env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(stdout: str) -> dict[str, Any]:
    line = next(x for x in stdout.splitlines() if x.startswith("STUB "))
    return json.loads(line[5:])


def test_the_engine_is_forked_from_the_warm_process_with_the_runs_stdio_env_cwd_and_exit_status(
    tmp_path: Path,
) -> None:
    work = tmp_path / "flow-run-dir"
    work.mkdir()
    with warm_process(tmp_path) as (warm, sock):
        proc = _stand_in(sock, "exit", "3", cwd=work, LORA_PIPELINE_STUB_MARKER="run-7")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    report = _report(out)
    assert report["ppid"] == warm.pid != proc.pid  # forked from the warm process, not started by the stand-in
    assert report["cwd"] == str(work)
    assert report["argv"] == ["exit", "3"]
    assert report["marker"] == "run-7"  # the run's environment, not the warm process's
    assert "stub stderr line" in err  # the stand-in's stderr is the engine's
    assert COLD not in err


def test_sigterm_to_the_flow_run_process_reaches_the_engine(tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    with warm_process(tmp_path) as (_, sock):
        proc = _stand_in(sock, "sleep", cwd=tmp_path, LORA_PIPELINE_STUB_PID_FILE=str(pid_file))
        _wait("the engine's pid", pid_file.exists)
        proc.send_signal(signal.SIGTERM)  # Prefect's cancellation of the flow-run process
        proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert Path(f"{pid_file}.terminated").read_text() == "terminated"


def test_sigkill_of_the_flow_run_process_kills_the_engine(tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    with warm_process(tmp_path) as (_, sock):
        proc = _stand_in(sock, "sleep", cwd=tmp_path, LORA_PIPELINE_STUB_PID_FILE=str(pid_file))
        engine = int(_wait("the engine's pid", lambda: pid_file.exists() and pid_file.read_text()))
        assert Path(f"/proc/{engine}/comm").read_text().strip() == "flow-run-engine"  # what ps and top show
        proc.kill()
        proc.wait(timeout=30)
        _wait("the engine to die with its stand-in", lambda: not _alive(engine), 15)
    assert not Path(f"{pid_file}.terminated").exists()  # killed, not asked to stop


def test_sigkill_of_the_engine_ends_the_flow_run_process_the_same_way(tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    with warm_process(tmp_path) as (_, sock):
        proc = _stand_in(sock, "sleep", cwd=tmp_path, LORA_PIPELINE_STUB_PID_FILE=str(pid_file))
        engine = int(_wait("the engine's pid", lambda: pid_file.exists() and pid_file.read_text()))
        os.kill(engine, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err  # what Prefect's worker sees, as if it had started the engine


def test_a_different_import_time_environment_starts_cold_with_the_names(tmp_path: Path) -> None:
    with warm_process(tmp_path) as (_, sock):
        proc = _stand_in(sock, cwd=tmp_path, OMP_NUM_THREADS="7", LORA_PIPELINE_STUB_MARKER="late-read")
        _, err = proc.communicate(timeout=120)
    # Cold means Prefect's own engine: here it gets no flow-run id.
    assert f"{COLD} (environment differs from the warm process's in OMP_NUM_THREADS)" in err
    assert "Invalid flow run id" in err and proc.returncode == 1


def test_variables_set_by_imports_may_differ(tmp_path: Path) -> None:
    """Prefect's worker imports flows for its crash hooks, so its environment gains what those imports set
    (MLflow's session id); that is not a different setup, and the run still starts warm."""
    with warm_process(tmp_path, preload=("json", "tests.warm_preload_stub")) as (warm, sock):
        proc = _stand_in(sock, "exit", "0", cwd=tmp_path, _LORA_PIPELINE_TEST_SESSION="another-session")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and COLD not in err
    assert _report(out)["ppid"] == warm.pid


def test_garbage_on_the_socket_is_refused_and_the_next_run_is_served(tmp_path: Path) -> None:
    with warm_process(tmp_path) as (warm, sock):
        for junk in (b"", b"GET / HTTP/1.1\r\n\r\n", b"\x00\x00\x00\x05{bad"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(str(sock))
                peer.sendall(junk)
        for request in ([1, 2], {"argv": [], "cwd": "/", "env": {"A": 1}}):  # valid JSON, not a request
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
                peer.connect(str(sock))
                send_request(peer, request)  # type: ignore[arg-type]
                assert peer.recv(100) == b""  # refused: closed without an engine
        proc = _stand_in(sock, "exit", "0", cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert warm.poll() is None  # still serving
    assert proc.returncode == 0 and COLD not in err
    assert _report(out)["ppid"] == warm.pid
    assert (tmp_path / "warm.log").read_text().count("warm worker: bad request") == 5


def test_no_warm_process_means_prefects_engine_started_as_before(tmp_path: Path) -> None:
    silent = _stand_in(None, cwd=tmp_path)
    _, err = silent.communicate(timeout=120)
    assert silent.returncode == 1 and "Invalid flow run id" in err and COLD not in err
    gone = _stand_in(tmp_path / "no-such.sock", cwd=tmp_path)
    _, err = gone.communicate(timeout=120)
    assert gone.returncode == 1 and f"{COLD} (no warm process at" in err


def test_changed_code_is_not_served_warm_and_the_warm_process_reloads(tmp_path: Path) -> None:
    source = ROOT / "flows" / "warm_worker.py"  # imported by the warm process (its own code)
    before = source.stat()
    with warm_process(tmp_path) as (warm, sock):
        try:
            os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # "an upgrade"
            stale = _stand_in(sock, "exit", "0", cwd=tmp_path)
            _, err = stale.communicate(timeout=120)
            assert "the project's code changed since the warm process started" in err
            _wait("the reloaded warm process's socket", sock.exists, 120)
            fresh = _stand_in(sock, "exit", "0", cwd=tmp_path)
            out, err = fresh.communicate(timeout=60)
            assert fresh.returncode == 0 and COLD not in err
            assert _report(out)["ppid"] == warm.pid  # re-executed in place: same pid, new code
        finally:
            os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_prefects_real_engine_runs_warm(tmp_path: Path) -> None:
    with warm_process(tmp_path, engine=None, preload=("prefect.flow_engine",)) as (_, sock):
        proc = _stand_in(sock, cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Invalid flow run id" in err and COLD not in err


@pytest.mark.parametrize(
    ("requested", "differs"),
    [
        ({"PREFECT__FLOW_RUN_ID": "x", "CUDA_VISIBLE_DEVICES": "1", "MLFLOW_TRACKING_URI": "y"}, []),
        ({"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE"]),
        ({"PREFECT_API_URL": "http://x/api", "PREFECT_LOGGING_LEVEL": "DEBUG"}, ["PREFECT_LOGGING_LEVEL"]),
        ({"_": "/bin/sh", "PWD": "/tmp"}, []),
    ],
)
def test_environment_names_read_late_may_differ(requested: dict[str, str], differs: list[str]) -> None:
    own = {"PATH": "/bin", "_": "/usr/bin/lora-pipeline", "PWD": "/srv"}
    assert env_differences(own, {**own, **requested}) == differs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for this purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
