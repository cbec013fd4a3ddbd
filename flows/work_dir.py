"""Where a flow keeps its files when no work_dir parameter is given."""

from __future__ import annotations

import os

WORK_DIR_ENV = "LORA_PIPELINE_WORK_DIR"


def default_work_dir() -> str:
    """`$LORA_PIPELINE_WORK_DIR`, else ./work: each worker sets it to its storage (compose: a shared volume)."""
    return os.environ.get(WORK_DIR_ENV) or "work"
