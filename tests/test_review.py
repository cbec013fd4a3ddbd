"""What a reviewer sees and does: the verdict on the MLflow run page (description + `gate` tag, checked in headless
Chromium against a real `mlflow server`), the model card, and `lora-pipeline promote` / `rollback` through the
real CLI entry point against a real MLflow server."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import GateConfig
from pipeline.evaluate.gate import evaluate_gate
from pipeline.evaluate.intervals import Interval
from pipeline.track.promotion import Assessment
from pipeline.track.registry import CHAMPION, get_alias, previous_tag
from pipeline.track.review import GATE_TAG, NOTE_TAG, model_card, run_description, set_run_verdict
from tests.conftest import free_port, start_mlflow_server, stop_mlflow_server
from tests.test_gate import _report, _task


def _assessment(champion_loss: float | None) -> Assessment:
    task = _task(Interval(0.5, 0.3, 0.7, 0.95), adapter_nll=1.0)
    forgetting = _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))
    verdict = evaluate_gate(GateConfig(), task, forgetting, champion_task_loss=champion_loss)
    note = "no champion yet" if champion_loss is None else f"version 1, held-out loss {champion_loss:.4f}"
    return Assessment(forgetting, task, verdict, None, champion_loss, note)


def _run(client: MlflowClient, experiment: str, assessment: Assessment, uri: str) -> str:
    exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    run_id = client.create_run(exp.experiment_id).info.run_id
    set_run_verdict(uri, run_id, assessment, run_description(assessment, run_id=run_id, base_model="tiny-base"))
    return run_id


def test_run_description_holds_the_verdict_table_the_champion_and_how_to_load() -> None:
    text = run_description(_assessment(1.25), run_id="abc123", base_model="tiny-base")
    assert text.startswith("**Promotion gate: PASSED**")
    assert "| rule | value | threshold | result |" in text
    assert "| beats_champion | +0.2500 | +0.0000 | pass |" in text
    assert "| loss (nats/token) | 2.0000 | 1.0000 | 1.2500 |" in text
    assert 'download_artifacts(run_id="abc123", artifact_path="adapter")' in text
    assert "nan" not in text
    failed = run_description(_assessment(0.9), run_id="abc123", base_model="tiny-base")
    assert failed.startswith("**Promotion gate: FAILED (beats_champion)**")


def test_model_card_names_base_data_lora_metrics_and_use() -> None:
    manifest = {
        "base_model": {"model_id": "org/base", "revision": "r1", "weights_hash": "w" * 64, "tokenizer_hash": "t"},
        "dataset_hash": "d" * 64,
        "config": {"lora": {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": "qv"}, "train": {"epochs": 3}},
        "train_examples": 40,
        "eval_examples": 5,
        "steps": 15,
    }
    card = model_card(manifest, _assessment(None), run_id="abc123")
    for needle in ("base_model: org/base", "d" * 64, "rank r = 8, alpha = 16.0", "target modules: qv"):
        assert needle in card
    assert "## Intended use" in card and "promotion gate: PASSED" in card and "## How to load" in card


@pytest.mark.slow
def test_promote_and_rollback_through_the_cli_show_the_verdict(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two passing runs and a failing one, each with a registered version: promote moves `champion` and prints the
    run's verdict; the failing run is refused without --force (its verdict printed); rollback steps back."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(mlflow_server)
    name = "review-cli"
    client.create_registered_model(name)
    runs = [_run(client, "review-cli", a, mlflow_server) for a in (_assessment(None), _assessment(1.25))]
    runs.append(_run(client, "review-cli", _assessment(0.9), mlflow_server))
    for run_id in runs:
        client.log_text(run_id, "adapter", "adapter/README.md")
        source = f"{client.get_run(run_id).info.artifact_uri}/adapter"
        client.create_model_version(name, source, run_id=run_id)

    assert main(["promote", runs[0], "--model", name]) == 0
    out = capsys.readouterr().out
    assert "Promotion gate: PASSED" in out and f"{name}@champion: no version -> version 1" in out
    assert main(["promote", runs[1], "--model", name, "--alias", CHAMPION]) == 0
    assert f"{name}@champion: version 1 -> version 2 (run {runs[1]}, gate passed)" in capsys.readouterr().out
    assert client.get_model_version(name, "2").tags[previous_tag(CHAMPION)] == "1"

    assert main(["promote", runs[2], "--model", name]) == 2
    err = capsys.readouterr().err
    assert "the gate did not pass" in err and "FAILED (beats_champion)" in err and "--force" in err
    assert get_alias(mlflow_server, name, CHAMPION).version == "2"

    assert main(["rollback", "--model", name]) == 0
    assert f"{name}@champion: version 2 -> version 1" in capsys.readouterr().out
    assert get_alias(mlflow_server, name, CHAMPION).version == "1"
    assert main(["rollback", "--model", name]) == 2
    assert "no version held 'champion' before it" in capsys.readouterr().err

    assert main(["promote", runs[2], "--model", name, "--force"]) == 0
    assert get_alias(mlflow_server, name, CHAMPION).version == "3"


@pytest.mark.slow
def test_run_page_shows_the_verdict_in_a_browser(tmp_path: Path) -> None:
    """A real `mlflow server` started here; headless Chromium opens the run page; the description shows the verdict
    table, and the run carries `gate=failed`."""
    from selenium.webdriver.common.by import By

    from tests.browser import chromium, require_chromium, wait_until

    require_chromium()
    port = free_port()
    proc = start_mlflow_server(tmp_path, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        client = MlflowClient(uri)
        run_id = _run(client, "review-browser", _assessment(0.9), uri)
        run = client.get_run(run_id)
        assert run.data.tags[GATE_TAG] == "failed"
        assert run.data.tags[NOTE_TAG].startswith("**Promotion gate: FAILED (beats_champion)**")
        with chromium() as driver:
            driver.get(f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}")  # type: ignore[attr-defined]
            body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
            wait_until(driver, 120, lambda d: "Promotion gate: FAILED (beats_champion)" in body(d))
            driver.save_screenshot(str(tmp_path / "run-page.png"))  # type: ignore[attr-defined]
            # The headline and the first rules show at once; "Show more" unfolds the rest of the description.
            driver.find_element(By.XPATH, "//*[normalize-space(text())='Show more']").click()  # type: ignore[attr-defined]
            wait_until(driver, 30, lambda d: "How to load" in body(d))
            shown = body(driver)
        assert "task_improvement" in shown and "Champion: version 1, held-out loss 0.9000" in shown
    finally:
        stop_mlflow_server(proc)
