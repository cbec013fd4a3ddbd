"""Reports people act on: the failure table (parquet + Markdown), the CLI summary, the flow stopping on `error`
checks, and the failure table landing in MLflow and in a Prefect table artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect import flow

from flows.ingest_tasks import stop_on_validation_errors, validate_and_snapshot
from flows.train_tasks import open_run
from pipeline.cli import main
from pipeline.config import PipelineConfig, ValidationConfig
from pipeline.ingest.client import ProjectRef
from pipeline.ingest.pull import Pull
from pipeline.ingest.reconcile import reconcile
from pipeline.ingest.records import normalize_tasks
from pipeline.validate.checks import ValidationFailed, validate_records
from pipeline.validate.prepare import prepare_dataset
from pipeline.validate.report import FAILURE_COLUMNS, failure_table, validation_markdown, write_failure_table
from schemas.pairs import FIX_HINTS
from tests.conftest import make_records

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")


def _task(task_id: int, prompt: str, response: str, category: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"prompt": prompt},
        "annotations": [
            {
                "id": 1000 + task_id,
                "completed_by": 7,
                "updated_at": "2024-05-01T10:00:00Z",
                "result": [
                    {"from_name": "response", "value": {"text": [response]}},
                    {"from_name": "category", "value": {"choices": [category]}},
                ],
            }
        ],
    }


def _pull(n: int = 60, flaws: dict[int, str] | None = None) -> Pull:
    """A pull of sample pairs; `flaws` replaces some responses with bad text."""
    tasks = []
    for r in make_records(n).itertuples(index=False):
        response = (flaws or {}).get(int(r.task_id), r.response)
        tasks.append(_task(int(r.task_id), r.prompt, response, r.category))
    project = ProjectRef(id=1, title="report-test", categories=CATEGORIES)
    return Pull(project=project, source={"kind": "test"}, normalized=normalize_tasks(tasks, project_id=1))


FLAWS = {3: "Dear {name}, see you  aboard.", 9: "Press <kbd>Enter</kbd>."}


def test_failure_table_columns_policies_and_hints() -> None:
    """One row per failure with task, annotation, check, policy, shortened value and how to fix; dataset-wide
    failures get a row without a task id."""
    pull = _pull(20, FLAWS)
    result = validate_records(pull.normalized.records, CATEGORIES, PipelineConfig())
    table = failure_table(result.quarantined, result.warnings, result.dataset_checks, result.policies)
    assert list(table.columns) == list(FAILURE_COLUMNS)
    t3 = table[table["task_id"] == 3]
    assert set(t3["check"]) == {"no_template_placeholder", "no_doubled_whitespace"}
    assert set(t3["policy"]) == {"quarantine"}
    assert t3["annotation_id"].tolist() == [1003, 1003]
    assert set(t3["how_to_fix"]) == {FIX_HINTS["no_template_placeholder"], FIX_HINTS["no_doubled_whitespace"]}
    t9 = table[table["task_id"] == 9]
    assert t9[["check", "policy"]].values.tolist() == [["known_markup_tags", "warn"]]
    wide = table[table["task_id"].isna()]
    assert "min_dataset_size" in set(wide["check"])  # 20 rows < 50
    assert wide.loc[wide["check"] == "min_dataset_size", "policy"].iloc[0] == "error"
    long_value = failure_table(
        validate_records(pull.normalized.records.assign(response="x  " * 400), CATEGORIES).quarantined
    )["value"]
    assert long_value.str.len().max() <= 120


def test_markdown_report_has_summary_dataset_checks_and_failures() -> None:
    """The Markdown report shows the per-check summary, each dataset check with its value, and each failure."""
    pull = _pull(20, FLAWS)
    result = validate_records(pull.normalized.records, CATEGORIES, PipelineConfig())
    rec = reconcile(20, result.valid, result.quarantined, pull.normalized.unusable)
    md = validation_markdown(rec, result.quarantined, result.checks_run, validation=result)
    assert "## Summary" in md and "rows checked" in md
    assert "| min\\_dataset\\_size | FAILED | error | 19 | 50 |" in md
    assert "| category\\_max\\_share | passed | error |" in md
    lines = [line for line in md.splitlines() if line.startswith("| 3 |")]
    assert len(lines) == 2
    assert any("no\\_template\\_placeholder" in line and "quarantine" in line for line in lines)
    assert "ERROR (training stops): min_dataset_size" in md


def test_prepare_dataset_writes_failures_parquet(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The snapshot holds failures.parquet (the same table) and the report; token checks ran with the base tokenizer."""
    config = PipelineConfig(base_model=str(tiny_model_dir))
    prepared = prepare_dataset(_pull(60, FLAWS), tmp_path, config)
    table = pd.read_parquet(prepared.snapshot.path / "failures.parquet")
    assert list(table.columns) == list(FAILURE_COLUMNS)
    assert {3, 9} <= set(table["task_id"].dropna().astype(int))
    assert "n_tokens:within_max_length" in prepared.snapshot.meta["checks_run"]
    assert prepared.validation.errors == ()
    assert any(d["name"] == "category_max_share" for d in prepared.snapshot.meta["dataset_checks"])
    again = prepare_dataset(_pull(60, FLAWS), tmp_path, config, previous=prepared.snapshot)
    assert again.snapshot.meta["previous_snapshot"] == str(prepared.snapshot.path)
    drift = {d.name: d for d in again.validation.dataset_checks}["drift_vocabulary"]
    assert drift.passed and drift.value == 0.0
    path = write_failure_table(table, tmp_path / "copy.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)


def test_cli_validate_prints_the_summary(tmp_path: Path, tiny_model_dir: Path, capsys: Any) -> None:
    """`lora-pipeline validate SNAPSHOT` prints rows checked/passed, quarantined per check and dataset checks."""
    prepared = prepare_dataset(_pull(60), tmp_path, PipelineConfig(base_model=str(tiny_model_dir)))
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(yaml.safe_dump({"validation": {"max_category_share": 0.2}}))
    code = main(["validate", str(prepared.snapshot.path), "--base-model", str(tiny_model_dir), "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith("rows checked") and line.split()[-1] == "60" for line in lines)
    assert any(line.startswith("rows passed") and line.split()[-1] == "60" for line in lines)
    assert "dataset checks passed / failed" in out
    assert "FAILED category_max_share [error]" in out
    assert main(["validate", str(prepared.snapshot.path), "--base-model", str(tiny_model_dir)]) == 0
    assert main(["validate", str(prepared.snapshot.path), "--base-model", str(tmp_path / "nope")]) == 2
    assert "--no-token-checks" in capsys.readouterr().err


@pytest.mark.slow
def test_flow_stops_on_error_and_logs_failures(
    prefect_harness: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `error` dataset check stops the flow in stop_on_validation_errors (report still written); a passing pull
    publishes the failure table, and open_run puts failures.parquet and the report in the MLflow run."""
    from prefect.artifacts import Artifact

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    strict = PipelineConfig(base_model=str(tiny_model_dir), validation=ValidationConfig(min_rows=1000))
    ok = PipelineConfig(base_model=str(tiny_model_dir), mlflow={"experiment": "validation-report-test"})

    @flow
    def check(config: PipelineConfig, root: str) -> str:
        prepared = validate_and_snapshot(_pull(60, FLAWS), root, config)
        stop_on_validation_errors(prepared)
        return open_run(config, prepared.snapshot, "work-key", "local:test", "flow-run", False).run_id

    with pytest.raises(ValidationFailed, match=r"min_dataset_size: 59 rows pass the row checks; at least 1000"):
        check(strict, str(tmp_path / "strict"))
    written = list((tmp_path / "strict").glob("*/failures.parquet"))
    assert len(written) == 1  # the report is kept for people to read

    run_id = check(ok, str(tmp_path / "ok"))
    files = {f.path for f in MlflowClient().list_artifacts(run_id, "validation")}
    assert {"validation/failures.parquet", "validation/validation_report.md"} <= files
    artifact = Artifact.get("validation-failures")
    assert artifact is not None and artifact.type == "table"
    assert "no_template_placeholder" in str(artifact.data)
    # The value shows as the report shows it: unquoted, the doubled space marked.
    shown = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert "«Dear {name}, see you··aboard.»" in {row["value"] for row in shown}
