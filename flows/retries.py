"""Which task failures Prefect retries: network hiccups, never configuration errors."""

from __future__ import annotations

from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from pipeline.ingest.client import LabelStudioError, LabelStudioUnavailable


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry network hiccups and a Label Studio that stayed down, not configuration errors (a wrong token
    stays wrong)."""
    try:
        state.result()
    except LabelStudioUnavailable:
        return True
    except (LabelStudioError, ValueError):
        return False
    except Exception:
        return True
    return False
