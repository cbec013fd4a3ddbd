"""One trainer per work directory: an exclusive `flock` on `<work>/.lock`, holding the owner's pid.

Two train runs of the same (snapshot, config) would write the same checkpoints and adapter; the second
one fails fast instead, naming the holder. The lock dies with its process (a SIGKILLed run leaves the
file but not the lock), so a rerun after a crash takes it over and resumes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class WorkBusyError(RuntimeError):
    """Another live process is training the same work directory."""


def lock_holder(work_dir: str | Path) -> int | None:
    """The pid recorded by the last process that took the lock (it may have died since), or None."""
    try:
        text = (Path(work_dir) / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextmanager
def exclusive_work(work_dir: str | Path) -> Iterator[Path]:
    """Hold `work_dir` for this process; raises WorkBusyError when another live process holds it."""
    path = Path(work_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkBusyError(
            f"{path} is being trained by another process (pid {lock_holder(path)}); "
            "wait for it to finish or stop it, then run again (the rerun resumes from its checkpoint)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
