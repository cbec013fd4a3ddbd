"""One way to open the MLflow tracking store, safe when several flows open a fresh SQLite store at once.

The first open of a new SQLite database runs MLflow's schema migrations; two processes doing it at once
crashed one of them (alembic "table already exists"). A local store is therefore first opened under an
exclusive `flock` next to the database file; once a process has opened it, later opens skip the lock.
A server URI (http://...) needs nothing: the server migrated its store when it started.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from mlflow.tracking import MlflowClient

_opened: set[str] = set()
_guard = threading.Lock()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, or None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve()


def ensure_store(tracking_uri: str) -> None:
    """Open (and so migrate) a local SQLite store once per process, under an exclusive lock."""
    db = sqlite_path(tracking_uri)
    if db is None or tracking_uri in _opened:
        return
    with _guard:
        if tracking_uri in _opened:
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db.with_name(db.name + ".init-lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Any store call creates the schema; searching experiments is the cheapest one.
            MlflowClient(tracking_uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        _opened.add(tracking_uri)


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for `tracking_uri`, its store migrated first if it is a new local database."""
    ensure_store(tracking_uri)
    return MlflowClient(tracking_uri)
