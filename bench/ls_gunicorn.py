"""Serve an already-initialized Label Studio data dir with gunicorn: several worker processes, as in production.

`label-studio start` runs Django's single-process development server, which executes one request's Python at
a time. Label Studio's Docker image instead runs uwsgi with several processes (`deploy/uwsgi.ini`:
`processes = $UWSGI_PROCESSES`, else 2 x CPU cores; 1 thread each). gunicorn's default sync workers are the
same model (one process per request, app loaded in each worker) and are pure Python, so the benchmark installs
gunicorn into Label Studio's own virtualenv on demand (`<venv>/bin/pip install gunicorn`, from PyPI).

The data dir must have been started once with `LocalLabelStudio` (pipeline/ingest/server.py): that
applies the migrations and creates the admin user and its API token; this server reuses both. The Django
settings are those of `label-studio start` (`label_studio.core.settings.label_studio`, LOG_LEVEL=WARNING,
the label_studio package dir on sys.path), so the only difference from the dev server is the WSGI server.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from pipeline.ingest.server import (
    LabelStudioStartError,
    ServerProcess,
    find_label_studio_bin,
    free_port,
    server_env,
    spawn_server,
    wait_healthy,
)

SETTINGS_MODULE = "label_studio.core.settings.label_studio"
# Longer than the single-request export of a large project takes, so that (b) is measured, not cut off
# (uwsgi.ini: http-timeout = 300; its harakiri of 120 s would kill a request running longer).
REQUEST_TIMEOUT_S = 300


def ensure_gunicorn(venv_bin: Path) -> Path:
    """The gunicorn executable of Label Studio's virtualenv, installed with that venv's pip if missing."""
    exe = venv_bin / "gunicorn"
    if not exe.is_file():
        print(f"installing gunicorn into {venv_bin.parent} (pip install gunicorn)", flush=True)
        subprocess.run([str(venv_bin / "pip"), "install", "--quiet", "gunicorn"], check=True)
    if not exe.is_file():
        raise LabelStudioStartError(f"`pip install gunicorn` did not create {exe}")
    return exe


def gunicorn_version(exe: Path) -> str:
    return subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class GunicornLabelStudio(ServerProcess):
    """Label Studio under gunicorn on loopback, `workers` sync worker processes, over an existing data dir."""

    data_dir: Path
    token: str
    workers: int = 2
    port: int = 0
    startup_timeout_s: float = 240.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    stop_timeout_s: ClassVar[float] = 30.0

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / f"gunicorn-{self.workers}.log"

    @property
    def pid(self) -> int | None:
        """The gunicorn master's pid, which is also the process group of its workers."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> GunicornLabelStudio:
        """Start gunicorn and wait until /health is UP and the API accepts the token."""
        venv_bin = find_label_studio_bin().parent
        exe = ensure_gunicorn(venv_bin)
        package_dir = next((venv_bin.parent / "lib").glob("python*/site-packages/label_studio"), None)
        if package_dir is None:
            raise LabelStudioStartError(f"no label_studio package under {venv_bin.parent / 'lib'}")
        self.port = self.port or free_port()
        env = {
            **server_env(Path(self.data_dir)),
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "LOG_LEVEL": "WARNING",  # what `label-studio start` sets by default (its --log-level)
            "HOST": "",
        }
        cmd = [
            str(exe),
            "label_studio.core.wsgi:application",
            "--pythonpath",
            str(package_dir),  # Label Studio imports its apps as top-level modules (`projects`, `tasks`)
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--worker-class",
            "sync",
            "--timeout",
            str(REQUEST_TIMEOUT_S),
            # gunicorn refuses request lines over 4094 bytes by default (HTTP 414); a pull's export chunks go up
            # to 7000 bytes (halved on a 414). uwsgi.ini's buffer-size = 65535 accepts them, so lift the limit.
            "--limit-request-line",
            "0",
        ]
        self._proc = spawn_server(cmd, env, self.log_path, Path(self.data_dir))
        wait_healthy(self._proc, self.url, self.startup_timeout_s, self.log_path, "gunicorn")
        me = httpx.get(f"{self.url}/api/current-user/whoami", headers={"Authorization": f"Token {self.token}"})
        if me.status_code != 200:
            self.stop()
            raise LabelStudioStartError(
                f"gunicorn Label Studio is up but refused the API token (HTTP {me.status_code}: {me.text[:200]!r})"
            )
        return self
