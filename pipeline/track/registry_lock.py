"""One promotion at a time per registered model: an exclusive `flock` on `<lock dir>/registry-<name>.lock`.

The champion comparison and the alias move happen while it is held (pipeline/track/promotion.py), so two
flows finishing at once cannot both read the same champion and both move the alias. The lock dir must be
on storage every worker that promotes shares (the work dir volume in compose; docs/reliability.md). The
lock dies with its process: a killed promotion never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lock_path(lock_dir: str | Path, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    return Path(lock_dir) / f"registry-{safe}.lock"


@contextmanager
def registry_lock(lock_dir: str | Path, model_name: str, *, timeout_s: float = 1800.0) -> Iterator[Path]:
    """Hold the promotion lock of `model_name`; waits for another holder (up to `timeout_s`, then TimeoutError)."""
    path = lock_path(lock_dir, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another promotion of {model_name!r} held {path} for over {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
