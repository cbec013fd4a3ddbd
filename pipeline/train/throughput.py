"""How fast and how big a training run was: peak memory and model FLOPs utilization (MFU)."""

from __future__ import annotations

import resource

import torch

# Dense bf16 peak FLOP/s by GPU name, for MFU; unknown GPUs report no MFU rather than a guess.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_memory(device: torch.device) -> int:
    """Peak memory of this run: CUDA's max allocated bytes, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def model_flops_utilization(n_params: int, tokens: float, seconds: float, device: torch.device) -> float | None:
    """Model FLOPs utilization: LoRA's forward (2N) + activation backward (2N) per token; the frozen base
    needs no weight gradients, so not the 6N of full fine-tuning. None off CUDA or on an unknown GPU."""
    if device.type != "cuda" or seconds <= 0:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None if peak is None else 4 * n_params * tokens / seconds / peak
