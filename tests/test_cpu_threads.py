"""The CPU thread governor: how many torch threads a CPU training run uses while other work shares the machine.

Its decisions are checked with recorded CPU samples (a real busy neighbour makes a timing test, which the
project keeps out of tests: bench/results/demo_learning.md has the measured speeds), and a real training run
checks what matters for lineage: switching threads mid-run leaves the adapter bit for bit the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.demo.demo_base import DemoBaseSettings, build_demo_base
from pipeline.train import cpu_threads
from pipeline.train.cpu_threads import CpuSample, ThreadGovernor, cpu_thread_governor, read_sample, threads_for
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records


def test_threads_follow_the_cores_the_rest_of_the_machine_leaves() -> None:
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.25) == 2  # a server's idle loop is not a neighbour
    assert threads_for(2, 0.4) == 1
    assert threads_for(2, 1.9) == 1  # never zero
    assert threads_for(16, 3.5) == 12
    assert threads_for(16, 0.0) == 16


class _Machine:
    """Recorded CPU samples: each `advance(seconds, others, own)` adds that much wall time with the rest of the
    machine keeping `others` cores busy and this process `own` cores."""

    def __init__(self) -> None:
        self.now = CpuSample(busy=0.0, own=0.0, at=100.0)
        self.set_calls: list[int] = []

    def sample(self) -> CpuSample:
        return self.now

    def advance(self, seconds: float, others: float, own: float) -> None:
        n = self.now
        self.now = CpuSample(busy=n.busy + (others + own) * seconds, own=n.own + own * seconds, at=n.at + seconds)


def test_governor_starts_at_one_thread_and_follows_the_neighbours() -> None:
    m = _Machine()
    gov = ThreadGovernor(
        2,
        interval_s=5.0,
        sample=m.sample,
        clock=lambda: m.now.at,
        set_threads=m.set_calls.append,
        get_threads=lambda: 1,
    )
    assert gov.threads == 1 and m.set_calls == [1]
    m.advance(2.0, others=0.0, own=1.0)
    assert gov.tick() == 1  # not a whole interval yet
    m.advance(4.0, others=0.05, own=1.0)
    assert gov.tick() == 2 and m.set_calls == [1, 2]  # an idle machine: both cores
    m.advance(6.0, others=0.67, own=1.33)  # a busy neighbour arrives and takes its fair share
    assert gov.tick() == 1
    m.advance(6.0, others=1.0, own=1.0)
    assert gov.tick() == 1 and gov.changes == 2  # no call when nothing changes
    m.advance(6.0, others=0.0, own=1.0)  # it left
    assert gov.tick() == 2
    gov.restore()
    assert m.set_calls[-1] == 1 and gov.threads == 1


def test_between_intervals_a_step_reads_only_the_clock() -> None:
    """tick() runs on every training step: /proc/stat is read once per interval, not once per step."""
    reads: list[float] = []
    now = [0.0]

    def sample() -> CpuSample:
        reads.append(now[0])
        return CpuSample(busy=0.0, own=now[0], at=now[0])

    gov = ThreadGovernor(2, interval_s=5.0, sample=sample, clock=lambda: now[0], set_threads=lambda n: None)
    for _ in range(100):
        now[0] += 0.25
        gov.tick()
    assert reads == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


def test_threads_are_put_back_when_the_loop_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_threads.ENV, "auto")
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="step failed"), cpu_threads.cpu_threads(torch.device("cpu")) as step:
        assert torch.get_num_threads() == 1 and set(step()) == {"threads"}
        torch.set_num_threads(2)  # as the governor would on an idle machine
        raise RuntimeError("step failed")
    assert torch.get_num_threads() == before
    monkeypatch.delenv(cpu_threads.ENV)
    with cpu_threads.cpu_threads(torch.device("cpu")) as step:
        assert step() == {}  # off: nothing for the progress bar, the count untouched
    assert torch.get_num_threads() == before


def test_governor_without_cpu_samples_leaves_threads_alone() -> None:
    calls: list[int] = []
    gov = ThreadGovernor(2, sample=lambda: None, set_threads=calls.append, get_threads=lambda: 1)
    assert gov.tick() == 1 and calls == [1]


def test_read_sample_parses_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 5000 40 5 6 7 0 0\ncpu0 50 10 15 2500 20 2 3 3 0 0\n")
    s = read_sample(str(stat))
    assert s is not None
    assert s.busy == pytest.approx((100 + 20 + 30 + 5 + 6 + 7) / cpu_threads.os.sysconf("SC_CLK_TCK"))
    assert read_sample(str(tmp_path / "missing")) is None
    stat.write_text("intr 1 2 3\n")
    assert read_sample(str(stat)) is None


def test_governor_only_when_asked_and_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    assert cpu_thread_governor(torch.device("cpu")) is None
    monkeypatch.setenv(cpu_threads.ENV, "auto")
    assert cpu_thread_governor(torch.device("meta")) is None
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 1)
    assert cpu_thread_governor(torch.device("cpu")) is None
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    gov = cpu_thread_governor(torch.device("cpu"))
    assert gov is not None and torch.get_num_threads() == 1
    gov.restore()
    assert torch.get_num_threads() == before


def test_switching_threads_mid_run_trains_the_same_adapter(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The governor changes torch's thread count while training: the adapter must not depend on it. Forced here to
    switch between one and two threads at every step."""
    records = make_records(24)
    cfg = load_config(
        base_model=str(tiny_model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 5e-3, "epochs": 2, "batch_size": 4, "seed": 0},
    )
    before = torch.get_num_threads()
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    plain = train_adapter(cfg, records, records.iloc[:0], tmp_path / "plain")
    monkeypatch.setenv(cpu_threads.ENV, "auto")
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    seen: list[int] = []
    flips = iter(range(10**6))
    monkeypatch.setattr(cpu_threads, "threads_for", lambda cores, others: 1 + next(flips) % 2)

    def tick(self: ThreadGovernor) -> int:  # every step is a new interval
        self.interval_s = 0.0
        seen.append(original_tick(self))
        return seen[-1]

    original_tick = ThreadGovernor.tick
    monkeypatch.setattr(ThreadGovernor, "tick", tick)
    switched = train_adapter(cfg, records, records.iloc[:0], tmp_path / "switched")
    assert set(seen) == {1, 2} and plain.steps == switched.steps >= 10
    weights = "adapter_model.safetensors"
    assert (tmp_path / "plain" / weights).read_bytes() == (tmp_path / "switched" / weights).read_bytes()
    assert torch.get_num_threads() == before


def test_the_demo_base_is_the_same_whatever_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo base's pretraining runs under the governor too; its weights (and so its cache name, which does not
    record the threads used) must not depend on it."""
    settings = DemoBaseSettings(corpus="world", steps=12, world_paragraphs=120)
    monkeypatch.delenv(cpu_threads.ENV, raising=False)
    plain = build_demo_base(tmp_path / "plain", settings)
    monkeypatch.setenv(cpu_threads.ENV, "auto")
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    flips = iter(range(10**6))
    monkeypatch.setattr(cpu_threads, "threads_for", lambda cores, others: 1 + next(flips) % 2)
    monkeypatch.setattr(ThreadGovernor, "__init__", _eager_init)
    switched = build_demo_base(tmp_path / "switched", settings)
    assert next(flips) >= 10  # it did switch, at every step
    weights = "model.safetensors"
    assert (plain / weights).read_bytes() == (switched / weights).read_bytes()


_init = ThreadGovernor.__init__


def _eager_init(self: ThreadGovernor, cores: int, **kw: object) -> None:
    _init(self, cores, **kw)  # type: ignore[arg-type]
    self.interval_s = 0.0
