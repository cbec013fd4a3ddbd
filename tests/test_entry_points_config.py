"""Every entry point honours the config: `labelstudio pull` and the flow's validate task write the same snapshot
from the same export under a non-default config (thresholds, policies, split, base-tokenizer token lengths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.ingest.client import annotation_result
from pipeline.ingest.export_file import pull_export_file
from pipeline.validate.snapshot import latest_snapshot, load_snapshot

CATS = ["billing", "shipping"]


def _task(i: int, response: str, category: str) -> dict[str, Any]:
    ann = {
        "id": 100 + i,
        "completed_by": 1,
        "result": annotation_result(response, category),
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": "2026-01-01T00:00:00.000001Z",
        "updated_at": "2026-01-01T00:00:00.000001Z",
    }
    return {"id": i, "data": {"prompt": f"Question {i} about my order?"}, "annotations": [ann], "project": 7}


@pytest.fixture
def export_and_config(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    tasks = [_task(i, f"Answer {i} is short.", CATS[i % 2]) for i in range(1, 25)]
    tasks.append(_task(25, "A very long answer " * 30, "billing"))  # over max_length in the base tokenizer
    tasks.append(_task(26, "Trailing space. ", "shipping"))
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "labelstudio": {"categories": CATS},
                "data": {"eval_fraction": 0.3, "max_length": 64},
                "validation": {
                    "min_rows": 10,
                    "max_category_share": 0.9,
                    "policies": {"no_surrounding_whitespace": "warn"},
                },
            }
        )
    )
    return export, cfg


@pytest.mark.slow
def test_cli_pull_and_flow_write_the_same_snapshot(
    export_and_config: tuple[Path, Path], tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect import flow

    from flows.ingest_tasks import validate_and_snapshot

    export, cfg = export_and_config
    argv = ["labelstudio", "pull", "--config", str(cfg), "--work-dir", str(tmp_path / "cli"), "--export-file"]
    assert main([*argv, str(export)]) == 0
    assert "snapshot:" in capsys.readouterr().out
    cli_snap = load_snapshot(latest_snapshot(tmp_path / "cli" / "snapshots"))

    @flow
    def validate_only(path: str, root: str, config_path: str) -> str:
        config = load_config(config_path)
        return str(validate_and_snapshot(pull_export_file(path, config.labelstudio), root, config).snapshot.path)

    flow_snap = load_snapshot(validate_only(str(export), str(tmp_path / "flow" / "snapshots"), str(cfg)))

    assert cli_snap.hash == flow_snap.hash
    for key in ("split", "checks_run", "dataset_checks", "reconciliation", "categories"):
        assert cli_snap.meta[key] == flow_snap.meta[key], key
    # The config really applied: its split, its token limit in the base tokenizer, its policy.
    assert cli_snap.meta["split"]["eval_fraction"] == 0.3
    quarantine = pd.read_parquet(cli_snap.path / "quarantine.parquet")
    pd.testing.assert_frame_equal(quarantine, pd.read_parquet(flow_snap.path / "quarantine.parquet"))
    assert quarantine["task_id"].tolist() == [25]
    assert quarantine["check"].tolist() == ["within_max_length"]
    assert 26 in set(cli_snap.records["task_id"])  # whitespace is only a warning under this config


def test_cli_pull_names_a_missing_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A base model that cannot be loaded stops the pull before it starts, with the flags that fix it."""
    export = tmp_path / "export.json"
    export.write_text(json.dumps([_task(1, "Answer.", "billing")]))
    argv = ["labelstudio", "pull", "--work-dir", str(tmp_path / "w"), "--export-file", str(export)]
    assert main([*argv, "--base-model", str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the tokenizer" in err and "--no-token-checks" in err
    assert not (tmp_path / "w" / "snapshots").exists()
