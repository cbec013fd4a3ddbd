"""`lora-pipeline deploy`: create the work pools and register prefect.yaml's deployments, idempotently.

Pools: `cpu` (ingest: pull, validate, snapshot) and `gpu` (training), both process pools; `gpu` gets a
concurrency limit equal to its GPU slots, so no more train runs start than there are GPUs (each worker
on that pool serves one GPU: `prefect worker start --pool gpu --limit 1` with its CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

CPU_POOL = "cpu"
GPU_POOL = "gpu"


@dataclass(frozen=True)
class PoolState:
    """A pool after `ensure_pool`: its name, limit and whether this call created it."""

    name: str
    concurrency_limit: int | None
    created: bool


def ensure_pool(name: str, concurrency_limit: int | None) -> PoolState:
    """Create the process pool `name` with this limit, or set the limit on the existing one."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=concurrency_limit,
                )
            )
            return PoolState(name, concurrency_limit, created=True)
        if pool.type != "process":
            raise ValueError(f"work pool {name!r} exists with type {pool.type!r}; the pipeline's pools are 'process'")
        if pool.concurrency_limit != concurrency_limit:
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
        return PoolState(name, concurrency_limit, created=False)


def default_gpu_slots() -> int:
    """GPUs this machine sees (at least 1: the pool still needs a limit where deploy runs without GPUs)."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


def deploy(prefect_file: Path, gpu_slots: int) -> list[PoolState]:
    """Pools first (prefect deploy refuses deployments for missing pools), then every deployment in the file."""
    if not prefect_file.is_file():
        raise FileNotFoundError(f"{prefect_file} does not exist (run from the repository root or pass --prefect-file)")
    pools = [ensure_pool(CPU_POOL, None), ensure_pool(GPU_POOL, gpu_slots)]
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all"]
    cmd += ["--prefect-file", str(prefect_file.resolve())]
    proc = subprocess.run(cmd, cwd=prefect_file.resolve().parent, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"prefect deploy failed ({proc.returncode}):\n{tail}")
    return pools
