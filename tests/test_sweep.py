"""The rank sweep: the recommendation rule and the plan on their own; then real sweeps on the tiny model against a
real MLflow server (the CLI through its console script, and the flow with a child that fails)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.evaluate.tradeoff import SweepPoint, pareto_front, recommend
from pipeline.track.sweep import parse_targets, plan_children
from pipeline.validate.snapshot import Snapshot, write_snapshot
from tests.conftest import make_records


def _point(label: str, gain: float, low: float, size: int, *, forgetting: bool = True, **kw: object) -> SweepPoint:
    return SweepPoint(
        label=label,
        run_id=f"run-{label}",
        rank=size,
        alpha=2.0 * size,
        learning_rate=1e-3,
        targets="qv",
        status="FINISHED",
        task_gain=gain,
        task_gain_low=low,
        task_gain_high=gain + (gain - low),
        forgetting_budget_used=0.5 if forgetting else 1.5,
        forgetting_passed=forgetting,
        adapter_bytes=size * 1000,
        trainable_params=size * 100,
        train_wall_time_s=float(size),
        **kw,  # type: ignore[arg-type]
    )


def test_recommends_the_smallest_adapter_within_the_best_gains_interval() -> None:
    points = [
        _point("r4", 0.10, 0.05, 4),  # below the best's lower bound (0.16): not as good as the best
        _point("r8", 0.18, 0.12, 8),  # within it: the smallest such -> recommended
        _point("r16", 0.20, 0.16, 16),  # the best
        _point("r32", 0.19, 0.15, 32),
    ]
    rec = recommend(points)
    assert rec.point is not None and rec.point.label == "r8"
    assert "r16" in rec.reason and "+0.1600" in rec.reason


def test_forgetting_and_failures_rule_children_out() -> None:
    failed = SweepPoint("r2", "run-r2", 2, 4.0, 1e-3, "qv", "FAILED", error="ValueError: boom")
    points = [failed, _point("r8", 0.19, 0.12, 8, forgetting=False), _point("r16", 0.20, 0.16, 16)]
    assert recommend(points).point.label == "r16"  # type: ignore[union-attr]
    # None qualifies: the only finished child forgets too much; the reason says so.
    rec = recommend([failed, _point("r8", 0.19, 0.12, 8, forgetting=False)])
    assert rec.point is None and "no child qualifies" in rec.reason
    assert recommend([failed]).point is None
    # A child that did not improve on the base is never recommended, however small.
    assert recommend([_point("r4", -0.01, -0.03, 4)]).point is None


def test_pareto_front_drops_dominated_points() -> None:
    a, b, c = _point("a", 0.2, 0.1, 4), _point("b", 0.1, 0.05, 8), _point("c", 0.3, 0.2, 16)
    assert {p.label for p in pareto_front([a, b, c])} == {"a", "c"}  # b: smaller gain and bigger than a


def test_plan_keeps_alpha_over_r_and_labels_each_child() -> None:
    cfg = load_config(base_model="some/base", lora={"r": 8, "alpha": 16.0})
    specs = plan_children(cfg, [4, 32], [1e-3, 2e-4], [parse_targets("qv"), parse_targets("q_proj,k_proj")])
    assert [s.label for s in specs][:4] == [
        "r4-qv-lr0.001",
        "r4-q_proj+k_proj-lr0.001",
        "r4-qv-lr0.0002",
        "r4-q_proj+k_proj-lr0.0002",
    ]
    assert {s.config.lora.alpha / s.config.lora.r for s in specs} == {2.0}
    assert specs[1].config.lora.target_modules == ("q_proj", "k_proj")
    fixed = plan_children(cfg, [4, 32], alpha="fixed")
    assert [s.label for s in fixed] == ["r4", "r32"] and {s.config.lora.alpha for s in fixed} == {16.0}
    with pytest.raises(ValueError, match="--ranks lists a value twice"):
        plan_children(cfg, [4, 4])
    with pytest.raises(ValueError, match=r"lora\.r"):
        plan_children(cfg, [0])


# ---- real sweeps: tiny model, real MLflow server, Prefect's harness ----


def _snapshot(root: Path) -> Snapshot:
    records = make_records(64)
    return write_snapshot(records, records.iloc[:0], root, meta={"source": {"kind": "test"}})


def _config(path: Path, experiment: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "qv"},
                "train": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8},
                "eval": {"generation_samples": 4, "max_new_tokens": 8, "bootstrap_samples": 200},
                "mlflow": {"experiment": experiment},
            }
        )
    )
    return path


def _children(ml: MlflowClient, parent_id: str) -> dict[str, object]:
    exp = ml.get_run(parent_id).info.experiment_id
    runs = ml.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["sweep_config"]: r for r in runs}


@pytest.mark.slow
def test_cli_sweep_of_three_ranks_logs_parent_children_table_plot_and_one_recommendation(
    mlflow_server: str, prefect_harness: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    snapshot = _snapshot(tmp_path / "snapshots")
    cfg = _config(tmp_path / "cfg.yaml", "sweep-cli-test")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env["OMP_NUM_THREADS"] = "1"
    lora = Path(sys.executable).parent / "lora-pipeline"
    extra = ["--base-model", str(tiny_model_dir), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(
        [str(lora), "sweep", str(snapshot.path), "--ranks", "2", "4", "8", "--config", str(cfg), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent_id = next(ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("sweep parent run "))

    ml = MlflowClient(mlflow_server)
    parent = ml.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep_ranks"] == "2,4,8" and parent.data.params["dataset_hash"] == snapshot.hash
    children = _children(ml, parent_id)
    assert set(children) == {"r2", "r4", "r8"}
    for label, run in children.items():
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        assert run.data.params["lora_r"] == label[1:] and run.data.tags["dataset_hash"] == snapshot.hash
        assert float(run.data.params["lora_alpha"]) == 2.0 * int(label[1:])  # the config's alpha / r kept
        m = run.data.metrics
        assert {
            "task/loss_nats/improvement",
            "model/adapter_bytes",
            "model/trainable_params",
            "train/wall_time_s",
        } <= set(m)
        assert run.data.tags["gate"] in ("passed", "failed")
    # Same frozen split for every child: the same eval rows, so the same base loss.
    assert len({round(r.data.metrics["task/loss_nats/base"], 9) for r in children.values()}) == 1
    sizes = [children[k].data.metrics["model/adapter_bytes"] for k in ("r2", "r4", "r8")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]

    files = {f.path for f in ml.list_artifacts(parent_id, "sweep")}
    assert {
        "sweep/tradeoff.md",
        "sweep/tradeoff.csv",
        "sweep/tradeoff.json",
        "sweep/pareto.png",
        "sweep/tradeoff_table.json",
    } <= files
    recommended = [k for k, r in children.items() if r.data.tags.get("recommended") == "true"]
    assert len(recommended) == 1
    table = json.loads(Path(ml.download_artifacts(parent_id, "sweep/tradeoff.json", str(tmp_path))).read_text())
    assert table["recommended"] == recommended[0] and parent.data.tags["recommended_config"] == recommended[0]
    assert [r["config"] for r in table["rows"] if r["recommended"]] == recommended
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**Rank sweep: {recommended[0]} recommended**") and "Rule: " in note
    assert "<- recommended" in proc.stdout


@pytest.mark.slow
def test_a_failing_child_shows_failed_and_the_sweep_goes_on(
    mlflow_server: str, prefect_harness: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep_flow import sweep_flow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    snapshot = _snapshot(tmp_path / "snapshots")
    outcome = sweep_flow(
        snapshot_dir=str(snapshot.path),
        ranks=[4],
        targets=["no_such_proj", "qv"],  # the first child cannot attach LoRA to a module the model lacks
        config_path=str(_config(tmp_path / "cfg.yaml", "sweep-fail-test")),
        base_model=str(tiny_model_dir),
        work_dir=str(tmp_path / "work"),
    )
    ml = MlflowClient(mlflow_server)
    children = _children(ml, outcome.parent_run_id)
    assert set(children) == {"r4-no_such_proj", "r4-qv"}
    failed, done = children["r4-no_such_proj"], children["r4-qv"]
    assert failed.info.status == "FAILED"
    assert "no_such_proj" in failed.data.tags["error"] and failed.data.tags["mlflow.note.content"].startswith(
        "**Sweep child FAILED**"
    )
    assert "error.txt" in {f.path for f in ml.list_artifacts(failed.info.run_id)}
    assert done.info.status == "FINISHED" and "recommended" not in failed.data.tags
    assert ml.get_run(outcome.parent_run_id).info.status == "FINISHED"
    statuses = {p["label"]: p["status"] for p in outcome.points}
    assert statuses == {"r4-no_such_proj": "FAILED", "r4-qv": "FINISHED"}
    if outcome.recommended_label is not None:
        assert outcome.recommended_label == "r4-qv" and done.data.tags["recommended"] == "true"
    else:
        assert "none recommended" in ml.get_run(outcome.parent_run_id).data.tags["mlflow.note.content"]
    note = ml.get_run(outcome.parent_run_id).data.tags["mlflow.note.content"]
    assert "1 of 2 children failed" in note and "**FAILED**" in note
    assert not math.isnan(next(p["task_gain"] for p in outcome.points if p["label"] == "r4-qv"))


@pytest.mark.slow
def test_a_child_that_logged_nothing_is_ended_failed_with_why(mlflow_server: str, tmp_path: Path) -> None:
    """A child whose worker died (its flow run crashed before it logged a point) is not dropped: the parent ends
    its run FAILED with the flow run's final state as the error."""
    from pipeline.track.sweep import open_sweep, read_point

    snapshot = _snapshot(tmp_path / "snapshots")
    cfg = load_config(base_model="some/base", mlflow={"experiment": "sweep-crash-test"})
    specs = plan_children(cfg, [4])
    runs = open_sweep(mlflow_server, cfg, snapshot, specs)
    point = read_point(mlflow_server, specs[0], runs.child_ids["r4"], "its flow run 123 ended Crashed: worker lost")
    assert point.status == "FAILED" and point.error.endswith("worker lost")
    run = MlflowClient(mlflow_server).get_run(runs.child_ids["r4"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == point.error
    assert run.data.tags["mlflow.parentRunId"] == runs.parent_id


@pytest.mark.slow
def test_children_fan_out_to_a_deployment(
    mlflow_server: str, prefect_harness: None, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With child_deployment set, every child runs as a flow run of that deployment (served here by a separate
    process, as a gpu worker would run it), in the MLflow run the parent opened for it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from flows.sweep_flow import sweep_flow
    from pipeline.ingest.server import stop_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "OMP_NUM_THREADS": "1"}
    serve = "from flows.sweep_flow import sweep_child_flow; sweep_child_flow.serve(name='sweep-test', limit=2)"
    root = Path(__file__).resolve().parents[1]
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", serve],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with get_client(sync_client=True) as client:
            for _ in range(240):
                try:
                    client.read_deployment_by_name("lora-sweep-child/sweep-test")
                    break
                except ObjectNotFound:
                    assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(0.5)
        snapshot = _snapshot(tmp_path / "snapshots")
        outcome = sweep_flow(
            snapshot_dir=str(snapshot.path),
            ranks=[2, 4],
            config_path=str(_config(tmp_path / "cfg.yaml", "sweep-deploy-test")),
            base_model=str(tiny_model_dir),
            work_dir=str(tmp_path / "work"),
            child_deployment="lora-sweep-child/sweep-test",
        )
    finally:
        stop_server(proc)
    ml = MlflowClient(mlflow_server)
    children = _children(ml, outcome.parent_run_id)
    assert {k: r.info.status for k, r in children.items()} == {"r2": "FINISHED", "r4": "FINISHED"}, (
        tmp_path / "serve.log"
    ).read_text()[-3000:]
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["sweep-test"])))
    assert len(runs) == 2 and all(r.state is not None and r.state.is_completed() for r in runs)
    # Each child's run names the worker's flow run that trained it (the orphan sweep judges it by that one).
    assert {r.data.tags["prefect_flow_run_id"] for r in children.values()} == {str(r.id) for r in runs}
    assert "sweep/pareto.png" in {f.path for f in ml.list_artifacts(outcome.parent_run_id, "sweep")}
