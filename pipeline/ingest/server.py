"""Start and stop a local Label Studio server (its own virtualenv) for the demo and the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import httpx

# Where `make install` puts the server; overridable because Label Studio pins its own Django
# and SDK and so lives outside the main virtualenv.
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = _REPO_ROOT / ".venv-labelstudio" / "bin" / "label-studio"


class LabelStudioStartError(RuntimeError):
    """The local Label Studio server did not come up; the message holds the tail of its log."""


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def find_label_studio_bin() -> Path:
    """The `label-studio` executable: $LABEL_STUDIO_BIN, the repo's .venv-labelstudio, or PATH."""
    env = os.environ.get("LABEL_STUDIO_BIN")
    candidates = [Path(env)] if env else []
    candidates.append(DEFAULT_BIN)
    which = shutil.which("label-studio")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise LabelStudioStartError(
        "label-studio executable not found (looked at $LABEL_STUDIO_BIN, "
        f"{DEFAULT_BIN} and PATH); run `make install` to create .venv-labelstudio"
    )


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment a Label Studio server process runs with over `data_dir` (never our client token)."""
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(Path(data_dir).resolve()),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # Webhooks to a loopback listener (feedback tests, local dev) need this off.
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    # The server must never see our own client credentials.
    env.pop("LABEL_STUDIO_API_KEY", None)
    return env


def spawn_server(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (so `stop_server` reaches its workers), output to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def _answers_up(r: httpx.Response) -> bool:
    """Label Studio's health answer: HTTP 200 with {"status": "UP"}."""
    if r.status_code != 200:
        return False
    body = r.json()
    return isinstance(body, dict) and body.get("status") == "UP"


def wait_healthy(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout_s: float,
    log_path: Path,
    name: str,
    *,
    health_path: str = "/health",
    ready: Callable[[httpx.Response], bool] = _answers_up,
    error: type[Exception] = LabelStudioStartError,
    progress_every_s: float | None = None,
) -> None:
    """Block until `url + health_path` answers `ready` (Label Studio's UP by default); stop the server and raise
    `error` with its log tail if it exits or never does. With `progress_every_s`, say on stdout that it is
    still starting."""
    started = time.monotonic()
    next_note = started + (progress_every_s or timeout_s)
    while time.monotonic() - started < timeout_s:
        code = proc.poll()
        if code is not None:
            raise error(f"{name} exited with code {code} before becoming healthy; log tail:\n{log_tail(log_path)}")
        try:
            if ready(httpx.get(f"{url}{health_path}", timeout=2.0)):
                return
        except (httpx.HTTPError, ValueError):
            pass
        if progress_every_s is not None and time.monotonic() > next_note:
            print(f"  still starting {name} ({time.monotonic() - started:.0f} s) ...", flush=True)
            next_note += progress_every_s
        time.sleep(1.0)
    stop_server(proc)
    raise error(f"{name} did not answer {url}{health_path} within {timeout_s:.0f}s; log tail:\n{log_tail(log_path)}")


@contextmanager
def signals_exit(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Inside: SIGTERM/SIGHUP raise SystemExit(128 + signal) instead of ending the process on the spot, so that
    every `with` server inside stops its process group. Servers run in their own group (`spawn_server`), so a
    signal to the parent never reaches them: `kill` of a demo used to leave Label Studio running."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    before = {n: signal.signal(n, _exit) for n in signums}
    try:
        yield
    finally:
        for n, handler in before.items():
            signal.signal(n, handler)


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_server(proc: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    """Stop a server started by `spawn_server` and every process it started (its process group)."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


class ServerProcess:
    """What every server started here shares: its loopback URL, stopping its process group, `with` support.

    Subclasses set `port` and `_proc` and implement `start()`.
    """

    port: int
    _proc: subprocess.Popen[bytes] | None
    stop_timeout_s: ClassVar[float] = 20.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and every process it started (its process group)."""
        proc, self._proc = self._proc, None
        stop_server(proc, timeout_s=self.stop_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class LocalLabelStudio(ServerProcess):
    """A Label Studio server on loopback with a headless-bootstrapped admin user and API token.

    Use as a context manager; `start()` blocks until `/health` answers UP or raises
    `LabelStudioStartError` with the server log's tail.
    """

    data_dir: Path
    port: int = 0
    username: str = "admin@example.com"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # Label Studio requires the bootstrap token to be 40 hex characters.
    token: str = field(default_factory=lambda: secrets.token_hex(20))
    startup_timeout_s: float = 240.0
    executable: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "label-studio.log"

    def start(self) -> LocalLabelStudio:
        """Start the server and wait until it is healthy."""
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        elif _port_in_use(self.port):
            # Label Studio would silently move to port+1; refuse instead so the URL we print is right.
            raise LabelStudioStartError(f"port {self.port} is already in use; pick another with --port")
        exe = self.executable or find_label_studio_bin()
        env = {
            **server_env(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
        }
        cmd = [
            str(exe),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self._proc = spawn_server(cmd, env, self.log_path, self.data_dir)
        wait_healthy(self._proc, self.url, self.startup_timeout_s, self.log_path, "label-studio")
        return self
