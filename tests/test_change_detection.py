"""Change detection, the work key's MLflow run, the base-model check and the work lock, on real MLflow (sqlite)
and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.base_model import BaseModelError, base_model_fingerprint
from pipeline.config import PipelineConfig
from pipeline.track.change_detection import changed_rows, decide_training
from pipeline.track.work_runs import claim_run, work_key
from pipeline.train.work_lock import WorkBusyError, exclusive_work, lock_holder
from pipeline.validate.snapshot import Snapshot, write_snapshot
from tests.conftest import make_records

FP = "local:0123456789abcdef"


def _snapshot(root: Path, records: pd.DataFrame) -> Snapshot:
    return write_snapshot(records, records.iloc[:0], root, meta={"source": {"kind": "test"}})


def _finish(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(uri).set_terminated(run_id, status)


def test_changed_rows_counts_added_changed_and_removed_tasks() -> None:
    old = make_records(20)
    new = old.copy()
    new.loc[3, "response"] = new.loc[3, "response"] + " (edited)"
    new = new.drop(index=[5, 6])
    extra = make_records(22).iloc[20:].assign(task_id=[9001, 9002])
    new = pd.concat([new, extra], ignore_index=True)
    assert changed_rows(new, old) == 1 + 2 + 2
    assert changed_rows(old, old.sample(frac=1, random_state=0)) == 0  # order does not matter


def test_decisions_follow_the_last_finished_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = PipelineConfig(base_model="x", orchestration={"min_changed_rows": 3})
    pool = make_records(50)
    first = _snapshot(tmp_path / "snaps", pool.head(40))

    assert decide_training(first, config, FP, uri).train  # nothing trained yet
    claim = claim_run(uri, config, first, key=work_key(first.hash, config), base_fingerprint=FP)
    # A crashed (still RUNNING) or failed run does not count as trained.
    assert decide_training(first, config, FP, uri).train
    _finish(uri, claim.run_id, "FAILED")
    assert decide_training(first, config, FP, uri).train
    reopened = claim_run(uri, config, first, key=work_key(first.hash, config), base_fingerprint=FP)
    assert reopened.run_id == claim.run_id and reopened.resumed
    assert MlflowClient(uri).get_run(claim.run_id).data.tags["attempts"] == "2"
    _finish(uri, claim.run_id)

    same = _snapshot(tmp_path / "snaps", pool.head(40))
    skip = decide_training(same, config, FP, uri)
    assert not skip.train and skip.last_run_id == claim.run_id
    assert skip.reason == f"no new annotations since snapshot {first.hash[:12]} (trained in MLflow run {claim.run_id})"
    assert decide_training(same, config, FP, uri, force=True).train

    # Another base model or a training-relevant config change has no trained run yet; transport does not count.
    assert decide_training(same, config, "local:other", uri).train
    assert decide_training(
        same, config.model_copy(update={"lora": config.lora.model_copy(update={"r": 4})}), FP, uri
    ).train
    faster = config.model_copy(update={"labelstudio": config.labelstudio.model_copy(update={"page_size": 500})})
    assert not decide_training(same, faster, FP, uri).train

    below = decide_training(_snapshot(tmp_path / "snaps", pool.head(41)), config, FP, uri)
    assert not below.train and below.changed_rows == 1
    assert "waiting for orchestration.min_changed_rows=3" in below.reason
    above = decide_training(_snapshot(tmp_path / "snaps", pool.head(44)), config, FP, uri)
    assert above.train and above.changed_rows == 4

    # The finished work is returned, not trained again; force opens a new run.
    again = claim_run(uri, config, first, key=work_key(first.hash, config), base_fingerprint=FP)
    assert again.finished and again.run_id == claim.run_id
    forced = claim_run(uri, config, first, key=work_key(first.hash, config), base_fingerprint=FP, force=True)
    assert not forced.finished and forced.run_id != claim.run_id


def test_base_model_fingerprint_local_and_missing(tiny_model_dir: Path, tmp_path: Path) -> None:
    fp = base_model_fingerprint(str(tiny_model_dir))
    assert fp.startswith("local:") and fp == base_model_fingerprint(str(tiny_model_dir))
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    assert base_model_fingerprint(str(copy)) == fp  # content, not path
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert base_model_fingerprint(str(copy)) != fp

    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match=r"has no config\.json"):
        base_model_fingerprint(str(tmp_path / "empty"))
    with pytest.raises(BaseModelError, match="no such directory"):
        base_model_fingerprint(str(tmp_path / "missing" / "model"))
    with pytest.raises(BaseModelError, match="not in the Hugging Face cache"):
        base_model_fingerprint("nobody/no-such-model-xyz")  # HF_HUB_OFFLINE=1 in tests


_HOLD = """
import sys, time
from pipeline.train.work_lock import exclusive_work
with exclusive_work(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_trainer_per_work_dir_and_a_killed_holder_releases_it(tmp_path: Path) -> None:
    work = tmp_path / "adapters" / "key"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lock_holder(work) == holder.pid
        with pytest.raises(WorkBusyError, match=f"pid {holder.pid}"), exclusive_work(work):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    with exclusive_work(work):
        assert lock_holder(work) == os.getpid()
