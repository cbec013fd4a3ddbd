"""The whole flow under Prefect's test harness, against real Label Studio and MLflow servers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from peft import PeftModel
from transformers import AutoModelForCausalLM

from flows.ingest_flow import ingest_flow
from flows.train_flow import train_flow
from pipeline.cli import main
from pipeline.demo.runner import seed_project
from pipeline.ingest.client import LabelStudioError, connect
from pipeline.ingest.server import LocalLabelStudio, free_port

pytestmark = pytest.mark.slow
EXPERIMENT = "flow-test"
# Every metric a finished, unregistered-or-registered train run carries (system/ aside), by its MLflow name.
EXPECTED_METRICS = {
    "data/rows_accepted",
    "data/rows_quarantined",
    "data/tasks_seen",
    "data/tasks_unusable",
    "eval/loss",
    "forgetting/general_suite_mc/acc_adapter",
    "forgetting/general_suite_mc/acc_base",
    "forgetting/general_suite_mc/acc_delta_frac",
    "forgetting/general_suite_mc/acc_delta_frac_high",
    "forgetting/general_suite_mc/acc_delta_frac_low",
    "forgetting/general_suite_ppl/ppl_adapter",
    "forgetting/general_suite_ppl/ppl_base",
    "forgetting/general_suite_ppl/ppl_change_rel",
    "forgetting/general_suite_ppl/ppl_change_rel_high",
    "forgetting/general_suite_ppl/ppl_change_rel_low",
    "forgetting/time_vs_train_ratio",
    "forgetting/wall_time_s",
    "gate/beats_champion/passed",
    "gate/beats_champion/threshold_nats",
    "gate/general_suite_mc_accuracy_drop/mde_pts",
    "gate/general_suite_mc_accuracy_drop/passed",
    "gate/general_suite_mc_accuracy_drop/threshold_pts",
    "gate/general_suite_mc_accuracy_drop/value_pts",
    "gate/general_suite_ppl_perplexity_increase/mde_rel",
    "gate/general_suite_ppl_perplexity_increase/passed",
    "gate/general_suite_ppl_perplexity_increase/threshold_rel",
    "gate/general_suite_ppl_perplexity_increase/value_rel",
    "gate/no_eval_leakage/passed",
    "gate/no_eval_leakage/threshold_rows",
    "gate/no_eval_leakage/value_rows",
    "gate/passed",
    "gate/task_improvement/mde_nats",
    "gate/task_improvement/passed",
    "gate/task_improvement/threshold_nats",
    "gate/task_improvement/value_nats",
    "gate/task_quality_exact_match/mde_frac",
    "gate/task_quality_exact_match/passed",
    "gate/task_quality_exact_match/threshold_p",
    "gate/task_quality_exact_match/value_p",
    "gate/task_quality_rouge_l/mde",
    "gate/task_quality_rouge_l/passed",
    "gate/task_quality_rouge_l/threshold",
    "gate/task_quality_rouge_l/value",
    "model/adapter_bytes",
    "model/trainable_frac",
    "model/trainable_params",
    "task/exact_match/adapter",
    "task/exact_match/base",
    "task/exact_match/delta",
    "task/exact_match/delta_high",
    "task/exact_match/delta_low",
    "task/exact_match/mcnemar_p",
    "task/generated_rows",
    "task/loss_nats/adapter",
    "task/loss_nats/base",
    "task/loss_nats/improvement",
    "task/loss_nats/improvement_high",
    "task/loss_nats/improvement_low",
    "task/perplexity/adapter",
    "task/perplexity/base",
    "task/rouge_l/adapter",
    "task/rouge_l/base",
    "task/rouge_l/delta",
    "task/rouge_l/delta_high",
    "task/rouge_l/delta_low",
    "train/grad_norm",
    "train/learning_rate",
    "train/loss",
    "train/padding_frac",
    "train/peak_memory_bytes",
    "train/replay_rows",
    "train/resumed_from_step",
    "train/step_tokens_per_s",
    "train/steps",
    "train/tokens_per_s",
    "train/wall_time_s",
}


def _write_config(path: Path, title: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "labelstudio": {"project_title": title},
                "lora": {"r": 4, "alpha": 8.0, "target_modules": "all-linear"},
                "train": {"learning_rate": 5e-3, "epochs": 2, "batch_size": 8},
                # System metrics sampled often enough for the short test run to log some.
                "mlflow": {"experiment": EXPERIMENT, "system_metrics_interval_s": 0.5},
            }
        )
    )
    return path


def test_flow_end_to_end_logs_a_complete_run(
    label_studio: LocalLabelStudio,
    mlflow_server: str,
    prefect_harness: None,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pull -> validate -> snapshot -> train -> forgetting check -> MLflow: every named param, metric, artifact."""
    client = connect(label_studio.url, label_studio.token)
    categories = ("schedules", "tickets", "lost_property", "accessibility")
    seeded = seed_project(client, "flow-e2e", categories, n=80)
    assert seeded.imported == 80
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = _write_config(tmp_path / "cfg.yaml", "flow-e2e")

    ingested = ingest_flow(config_path=str(cfg), work_dir=str(tmp_path / "work"), base_model=str(tiny_model_dir))
    assert ingested.trained and ingested.train is not None, ingested.message
    outcome = ingested.train

    ml = MlflowClient(mlflow_server)
    run = ml.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["lora_r"] == "4" and p["lora_alpha"] == "8.0" and p["lora_dropout"] == "0.05"
    assert p["target_modules"] == "all-linear" and p["learning_rate"] == "0.005"
    assert p["base_model"] == str(tiny_model_dir) and len(p["dataset_hash"]) == 64
    m = run.data.metrics
    # One sectioned name per quantity (pipeline/track/metric_names.py): the whole list, so a new metric or a
    # second name for an old one shows up here.
    named = {k for k in m if not k.startswith("system/")}
    assert ("registry/version" in named) == outcome.gate_passed  # only a registered adapter has a version
    named.discard("registry/version")
    assert named == EXPECTED_METRICS, (
        f"logged, not expected: {sorted(named - EXPECTED_METRICS)}; expected, not logged: {sorted(EXPECTED_METRICS - named)}"
    )
    # MLflow's own system metrics, sampled while the run trained and evaluated.
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(m)
    suite = "forgetting/general_suite_ppl"
    assert m[f"{suite}/ppl_change_rel"] == pytest.approx(m[f"{suite}/ppl_adapter"] / m[f"{suite}/ppl_base"] - 1)
    ratio = m["forgetting/wall_time_s"] / m["train/wall_time_s"]
    assert m["forgetting/time_vs_train_ratio"] == pytest.approx(ratio)
    losses = ml.get_metric_history(outcome.run_id, "train/loss")
    assert [x.step for x in losses] == list(range(1, int(m["train/steps"]) + 1))
    assert losses[-1].value < losses[0].value
    evals = ml.get_metric_history(outcome.run_id, "eval/loss")
    assert evals and evals[-1].step == int(m["train/steps"])  # the last point is the trained adapter's
    # Within its first 80 tasks the demo seeding plants 2 whitespace flaws + 1 blank response, 2 skips, 1 untouched.
    assert m["data/tasks_seen"] == 80 and m["data/rows_quarantined"] == 3 and m["data/tasks_unusable"] == 3
    assert run.data.tags["label_studio_project"] == str(seeded.project.id)
    assert run.data.tags["prefect_flow_run_id"]
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "evaluation"}  # the snapshot's two splits, as Hugging Face datasets
    assert {d.digest for d in inputs.values()} == {p["dataset_hash"][:36]}
    assert {d.source_type for d in inputs.values()} == {"local"}

    files = {f.path for d in ("adapter", "validation", "evaluation") for f in ml.list_artifacts(outcome.run_id, d)}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/manifest.json",
        "validation/validation_report.md",
        "validation/quarantine.parquet",
        "validation/snapshot.json",
    } <= files
    assert any(f.startswith("evaluation/") for f in files)
    # Forgetting deltas with intervals, the gate verdict and its report, plots, side-by-side table, registry.
    assert {
        "evaluation/gate_report.md",
        "evaluation/forgetting.json",
        "evaluation/forgetting.png",
        "evaluation/loss_curves.png",
        "evaluation/side_by_side_table.json",
    } <= files
    lo, mid, hi = (m[f"forgetting/general_suite_mc/acc_delta_frac{s}"] for s in ("_low", "", "_high"))
    assert lo <= mid <= hi
    assert m["gate/passed"] == float(outcome.gate_passed) and "gate/task_improvement/value_nats" in m
    # The verdict on the run page (issue 13): description, `gate` tag, the model card in the adapter.
    final = ml.get_run(outcome.run_id)
    assert final.data.tags["gate"] == ("passed" if outcome.gate_passed else "failed")
    assert final.data.tags["mlflow.note.content"].startswith("**Promotion gate: ")
    assert "data/train_content_keys.json" in {f.path for f in ml.list_artifacts(outcome.run_id, "data")}
    if outcome.gate_passed:
        version = ml.get_model_version_by_alias("lora-adapter", "candidate")
        assert version.version == outcome.registered_version and version.run_id == outcome.run_id
    else:
        assert outcome.registered_version is None

    local = Path(ml.download_artifacts(outcome.run_id, "", str(tmp_path / "dl")))
    report = (local / "validation" / "validation_report.md").read_text()
    assert "no_surrounding_whitespace" in report and "not_empty" in report and "only_skipped" in report
    card = (local / "adapter" / "README.md").read_text()
    assert "## Intended use" in card and p["dataset_hash"] in card
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(local / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    # No secret anywhere: params, tags, or any artifact file.
    token = label_studio.token
    assert all(token not in v for v in [*p.values(), *run.data.tags.values()])
    for f in local.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f

    # Nothing changed in Label Studio: the next run pulls, snapshots the same dataset and stops there.
    exp_id = run.info.experiment_id
    runs_before = len(ml.search_runs([exp_id]))
    versions_before = len(ml.search_model_versions("name='lora-adapter'"))
    again = ingest_flow(config_path=str(cfg), work_dir=str(tmp_path / "work"), base_model=str(tiny_model_dir))
    assert not again.trained and again.train is None
    assert again.snapshot_hash == ingested.snapshot_hash
    # The pull brought nothing new, so the snapshot it made is reused: not validated or written again.
    assert again.snapshot_dir == ingested.snapshot_dir
    assert len([d for d in (tmp_path / "work" / "snapshots").iterdir() if not d.name.startswith(".")]) == 1
    assert again.message.startswith(f"no new annotations since snapshot {ingested.snapshot_hash[:12]}")
    assert len(ml.search_runs([exp_id])) == runs_before
    assert len(ml.search_model_versions("name='lora-adapter'")) == versions_before

    # The same reference handed to the train flow again finds its finished work: no second run or version.
    repeat = train_flow(
        snapshot_dir=ingested.snapshot_dir,
        snapshot_hash=ingested.snapshot_hash,
        config=yaml.safe_load(cfg.read_text()) | {"base_model": str(tiny_model_dir)},
        base_model_fingerprint="local:x",
        work_dir=str(tmp_path / "work"),
    )
    assert repeat.already_trained and repeat.run_id == outcome.run_id
    assert len(ml.search_runs([exp_id])) == runs_before


def test_wrong_token_fails_before_training_and_logs_no_run(
    label_studio: LocalLabelStudio,
    mlflow_server: str,
    prefect_harness: None,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rejected token stops the flow at the pull, with no retries and no MLflow run created."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "f" * 40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = _write_config(tmp_path / "cfg.yaml", "never-created")
    ml = MlflowClient(mlflow_server)
    exp = ml.get_experiment_by_name(EXPERIMENT)
    before = len(ml.search_runs([exp.experiment_id])) if exp else 0
    with pytest.raises(LabelStudioError, match="rejected the API key"):
        ingest_flow(config_path=str(cfg), work_dir=str(tmp_path / "w"), base_model=str(tiny_model_dir))
    exp = ml.get_experiment_by_name(EXPERIMENT)
    assert (len(ml.search_runs([exp.experiment_id])) if exp else 0) == before
    assert not (tmp_path / "w" / "adapters").exists()


def test_missing_base_model_stops_before_the_pull(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A base model that is neither a directory nor resolvable is one line, before Label Studio is contacted
    (the URL below would refuse connections, which would be a different error)."""
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a" * 40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", "--work-dir", str(tmp_path / "w"), "--base-model", "nobody/no-such-model-xyz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lora-pipeline: error: base model 'nobody/no-such-model-xyz' is not a local directory")
    assert not (tmp_path / "w" / "snapshots").exists()


def test_cli_reports_unreachable_label_studio_in_one_line(
    prefect_harness: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`lora-pipeline run` against a dead URL exits 2 with one line naming LABEL_STUDIO_URL."""
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a" * 40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    # No outage patience: a server that stays down is otherwise waited for (tests/test_ingest_outage.py).
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"labelstudio": {"outage_patience_s": 0, "retries": 1}}))
    code = main(["run", "--config", str(cfg), "--work-dir", str(tmp_path / "w"), "--base-model", str(tiny_model_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("lora-pipeline: error: Label Studio at http://127.0.0.1:")
    assert "LABEL_STUDIO_URL" in err[-1]
