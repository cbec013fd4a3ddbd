"""Data parallelism across processes started by `torchrun` or `accelerate launch` (DDP).

We do not launch processes ourselves: the launcher sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT, and `init_distributed` joins the process group (NCCL on CUDA, gloo on
CPU). Every rank derives the same shuffled order from the seed and takes every `world`-th example
of each micro-batch, so the union of the ranks' work is exactly the single-process micro-batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group if a launcher started us with WORLD_SIZE > 1; else a single-process env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world=world, local_rank=local_rank)


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process on CUDA (the launcher's LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and env.enabled:
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return device


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(value: float, env: DistEnv, device: torch.device) -> float:
    """Sum a Python number over ranks (metrics such as tokens processed)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
