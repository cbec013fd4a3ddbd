"""Shared by the reliability sections: REPO, log, the worker subprocess (Child), kill delays (spread)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "bench" / "reliability_report.py"  # runs a worker with --worker KIND --spec JSON


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


class Child:
    """A worker process (bench/reliability_report.py --worker): stdout read line by line, stderr to a log file."""

    def __init__(self, kind: str, spec: dict[str, Any], log_path: Path) -> None:
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, str(ENTRY), "--worker", kind, "--spec", json.dumps(spec)]
        with log_path.open("ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines: list[str] = []

    def wait_for(self, prefix: str) -> str:
        """The first stdout line starting with `prefix`; RuntimeError with the log's tail if the child exits first."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        self.proc.wait()
        raise RuntimeError(
            f"worker exited ({self.proc.returncode}) before printing {prefix}:\n"
            f"{self.log_path.read_text(errors='replace')[-3000:]}"
        )

    def kill_after(self, delay_s: float) -> None:
        time.sleep(delay_s)
        self.proc.kill()  # SIGKILL; nothing if it already exited
        self.finish()

    def finish(self, timeout_s: float = 900) -> int:
        """Read the rest of stdout and reap; a child still running after `timeout_s` is killed (RuntimeError)."""
        assert self.proc.stdout is not None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self.proc.kill()

        timer = threading.Timer(timeout_s, expire)
        timer.start()
        try:
            self.lines += [ln.strip() for ln in self.proc.stdout.read().splitlines()]
            returncode = self.proc.wait()
        finally:
            timer.cancel()
        if expired.is_set():
            raise RuntimeError(
                f"worker still running after {timeout_s:.0f} s, killed:\n{self.log_path.read_text(errors='replace')[-3000:]}"
            )
        return returncode

    def line(self, prefix: str) -> str | None:
        return next((ln for ln in self.lines if ln.startswith(prefix)), None)


def spread(n: int, rng: random.Random) -> list[float]:
    """`n` fractions in [0, 1), one in each of n equal slices, in random order: kill delays as a share of an
    unkilled run's duration, so that the kills cover the whole of it."""
    fractions = [(i + rng.random()) / n for i in range(n)]
    rng.shuffle(fractions)
    return fractions
