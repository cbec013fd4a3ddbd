"""CPU intra-op threads that follow the machine: every core while nothing else runs, fewer when something does.

Why (measured on the 2-core CI machine, 200 demo training steps, bench/results/demo_learning.md): two torch threads
trained 1.4-1.6x faster than one on an idle machine, but once one other busy process shared it, two threads ran
1.4-2.7x *slower* than one (OpenMP threads spin-wait for a core the other process holds). A fixed thread count
loses one way or the other, so the demo used to pin one. `ThreadGovernor` measures instead: every `interval_s` it
reads how much CPU the rest of the machine used since the last look (all CPUs' busy time from /proc/stat minus
this process's own) and sets torch's thread count to the cores left, at least one. It starts at one thread, so a
busy machine never sees the slow case for longer than one interval.

Results do not depend on it: on the demo model one forward and backward gave bitwise-equal loss and gradients at
one and two threads (tests/test_cpu_threads.py checks a training run's adapter is identical).

On only when asked: `LORA_PIPELINE_CPU_THREADS=auto` (the demo sets it unless OMP_NUM_THREADS is set), on a CPU
device, where /proc/stat exists (Linux). Anything else leaves torch's thread count alone.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

ENV = "LORA_PIPELINE_CPU_THREADS"
AUTO = "auto"
# Cores the rest of the machine may use before one of ours is given up: background noise (a server's
# idle loop, the progress bar's terminal) stays below it, one busy process is well above it.
SLACK_CORES = 0.3


@dataclass(frozen=True)
class CpuSample:
    """CPU time in seconds: `busy` of all CPUs together (not idle, not waiting on I/O), `own` of this process;
    `at` a monotonic clock reading."""

    busy: float
    own: float
    at: float


def read_sample(stat_path: str = "/proc/stat") -> CpuSample | None:
    """Now's CPU times, or None where /proc/stat is missing or unreadable (not Linux)."""
    try:
        with open(stat_path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return CpuSample(
        busy=(user + nice + system + irq + softirq + steal) / hz, own=t.user + t.system, at=time.monotonic()
    )


def threads_for(cores: int, others: float) -> int:
    """Threads to run when the rest of the machine keeps `others` cores busy on average."""
    return max(1, min(cores, math.floor(cores - others + SLACK_CORES)))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ThreadGovernor:
    """Call `tick()` often (every optimizer step); every `interval_s` it re-decides torch's thread count."""

    def __init__(
        self,
        cores: int,
        *,
        interval_s: float = 5.0,
        sample: Callable[[], CpuSample | None] = read_sample,
        clock: Callable[[], float] = time.monotonic,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        get_threads: Callable[[], int] = torch.get_num_threads,
    ) -> None:
        self.cores = cores
        self._initial = get_threads()
        self.interval_s = interval_s
        self._sample = sample
        self._clock = clock
        self._set = set_threads
        self.threads = 1
        self.changes = 0
        self._set(1)
        self._last = sample()

    def restore(self) -> None:
        """Back to the thread count before the governor (what runs after training keeps its setting)."""
        self._set(self._initial)
        self.threads = self._initial

    def tick(self) -> int:
        """The thread count in effect after this call. Between intervals only the clock is read (a training step's
        hot path), never /proc/stat."""
        if self._last is None or self._clock() - self._last.at < self.interval_s:
            return self.threads
        now = self._sample()
        if now is None or now.at <= self._last.at:
            return self.threads
        wall = now.at - self._last.at
        others = max(0.0, (now.busy - self._last.busy) - (now.own - self._last.own)) / wall
        self._last = now
        want = threads_for(self.cores, others)
        if want != self.threads:
            self._set(want)
            self.threads = want
            self.changes += 1
        return self.threads


@contextmanager
def cpu_threads(device: torch.device) -> Iterator[Callable[[], dict[str, int]]]:
    """Around a training loop: yields a function to call once a step, which lets the governor re-decide when due and
    returns the progress bar's `threads` entry (`{}` when no governor runs). Torch's thread count is put back on
    the way out, also when the loop raises (a retried task in the same process starts from it again)."""
    governor = cpu_thread_governor(device)
    if governor is None:
        yield dict
        return
    try:
        yield lambda: {"threads": governor.tick()}
    finally:
        governor.restore()


def cpu_thread_governor(device: torch.device) -> ThreadGovernor | None:
    """A governor when `LORA_PIPELINE_CPU_THREADS=auto`, the device is the CPU and the machine has more than one
    core and a /proc/stat; None otherwise (torch's thread count stays as it is)."""
    if os.environ.get(ENV, "").strip().lower() != AUTO or device.type != "cpu":
        return None
    cores = available_cores()
    if cores < 2 or read_sample() is None:
        return None
    return ThreadGovernor(cores)
