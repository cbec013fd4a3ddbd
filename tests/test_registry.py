"""Registering a gated adapter in a real MLflow server's model registry, and the champion comparison."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from peft import PeftModel

from pipeline.config import PipelineConfig, load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.serve.canary import canary_check
from pipeline.track.promotion import assess_adapter, promote
from pipeline.track.registry import CANDIDATE, CHAMPION, MODEL_ARTIFACT, TAG_BASE_WEIGHTS, get_alias
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from tests.conftest import make_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sane(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PipelineConfig, TrainResult, pd.DataFrame]:
    records = make_records(64)
    train_df, held = records.iloc[:48], records.iloc[48:]
    cfg = load_config(
        base_model=str(tiny_model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "qv"},
        train={"learning_rate": 1e-3, "epochs": 2, "batch_size": 8},
        eval={"generation_samples": 2, "max_new_tokens": 8},
        gate={"registered_model": "registry-test"},
    )
    return cfg, train_adapter(cfg, train_df, held, tmp_path_factory.mktemp("sane")), held


def _new_run(uri: str) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test")
    )
    return client.create_run(exp.experiment_id).info.run_id


def test_passing_adapter_is_registered_as_candidate_referencing_its_base(
    mlflow_server: str, tiny_model_dir: Path, sane: tuple[PipelineConfig, TrainResult, pd.DataFrame], tmp_path: Path
) -> None:
    cfg, result, held = sane
    assert get_alias(mlflow_server, "registry-test", CHAMPION) is None
    assessment = assess_adapter(cfg, result.adapter_dir, held, tracking_uri=mlflow_server)
    assert assessment.verdict.passed, assessment.report_markdown()
    assert "no `champion` alias" in assessment.champion_note
    run_id = _new_run(mlflow_server)

    promotion = promote(
        cfg,
        result.adapter_dir,
        assessment,
        tracking_uri=mlflow_server,
        run_id=run_id,
        eval_records=held,
        lock_dir=tmp_path,
        serving_check=lambda adapter_dir: canary_check(adapter_dir, str(tiny_model_dir)),  # the real canary
    )
    version = promotion.version

    assert promotion.refused is None
    assert version is not None and CANDIDATE in version.aliases and CHAMPION not in version.aliases
    assert get_alias(mlflow_server, "registry-test", CANDIDATE).version == version.version
    assert version.run_id == run_id
    assert version.tags[TAG_BASE_WEIGHTS] == result.manifest["base_model"]["weights_hash"]
    # Adapter only: the PEFT weights are there, the base weights are referenced, not copied.
    client = MlflowClient(mlflow_server)
    files = {f.path for f in client.list_artifacts(run_id, f"{MODEL_ARTIFACT}/peft")}
    assert f"{MODEL_ARTIFACT}/peft/adapter_model.safetensors" in files
    assert not client.list_artifacts(run_id, f"{MODEL_ARTIFACT}/model")
    local = Path(client.download_artifacts(run_id, f"{MODEL_ARTIFACT}/MLmodel", str(tmp_path)))
    flavor = yaml.safe_load(local.read_text())["flavors"]["transformers"]
    assert flavor["local_base_model_path"] == str(tiny_model_dir.resolve())
    # The registry URI loads back as a PEFT model on the referenced base.
    mlflow.set_tracking_uri(mlflow_server)
    components = mlflow.transformers.load_model(f"models:/registry-test@{CANDIDATE}", return_type="components")
    assert isinstance(components["model"], PeftModel)


def test_an_adapter_the_serving_check_refuses_is_not_registered(
    mlflow_server: str, sane: tuple[PipelineConfig, TrainResult, pd.DataFrame], tmp_path: Path
) -> None:
    """The gate passes, but the adapter does not load on the base the server serves: nothing is registered and the
    promotion says why."""
    cfg, result, held = sane
    other_base = build_tiny_model(tmp_path / "other-base", pretrain_steps=0, seed=7)
    assessment = assess_adapter(cfg, result.adapter_dir, held, tracking_uri=mlflow_server)
    assert assessment.verdict.passed
    run_id = _new_run(mlflow_server)
    promotion = promote(
        cfg,
        result.adapter_dir,
        assessment,
        tracking_uri=mlflow_server,
        run_id=run_id,
        eval_records=held,
        lock_dir=tmp_path,
        serving_check=lambda adapter_dir: canary_check(adapter_dir, str(other_base)),
    )
    assert promotion.version is None
    assert promotion.refused is not None and "base" in promotion.refused
    assert not MlflowClient(mlflow_server).search_model_versions(f"run_id='{run_id}'")


def test_auto_promotion_sets_champion_and_an_adapter_cannot_beat_itself(
    mlflow_server: str, sane: tuple[PipelineConfig, TrainResult, pd.DataFrame], tmp_path: Path
) -> None:
    """With auto_promote the adapter becomes champion; assessed again, the champion is loaded next to it
    on the same base and scores the same held-out loss, so `beats_champion` (strictly lower) fails."""
    cfg, result, held = sane
    auto = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"auto_promote": True})})
    first = assess_adapter(auto, result.adapter_dir, held, tracking_uri=mlflow_server)
    run_id = _new_run(mlflow_server)
    version = promote(
        auto,
        result.adapter_dir,
        first,
        tracking_uri=mlflow_server,
        run_id=run_id,
        eval_records=held,
        lock_dir=tmp_path,
        train_records=make_records(64).iloc[:48],
    ).version
    assert version is not None and CHAMPION in version.aliases
    # Registration leaves the run as it was: only the flow marks it FINISHED.
    assert MlflowClient(mlflow_server).get_run(run_id).info.status == "RUNNING"

    again = assess_adapter(auto, result.adapter_dir, held, tracking_uri=mlflow_server)
    assert again.champion_version == version.version
    assert again.champion_task_loss == pytest.approx(again.task.adapter_loss, rel=1e-6)
    assert again.verdict.failed_rules == ["beats_champion"], again.verdict.markdown()
    kept = promote(
        auto,
        result.adapter_dir,
        again,
        tracking_uri=mlflow_server,
        run_id="unused",
        eval_records=held,
        lock_dir=tmp_path,
    )
    assert kept.version is None and not kept.reassessed
    assert dataclasses.asdict(again.verdict)["rules"][-1]["name"] == "beats_champion"


_PROMOTER = """
import json, sys, time
from pathlib import Path
import pandas as pd
from pipeline.config import PipelineConfig
from pipeline.track.promotion import assess_adapter, promote
from pipeline.track import tracking
from pipeline.track.store import tracking_client

uri, adapter, held, cfg_json, ready, go, out, lock_dir, trained = sys.argv[1:10]
cfg = PipelineConfig.model_validate_json(Path(cfg_json).read_text())
records = pd.read_parquet(held)
train_records = pd.read_parquet(trained)
client = tracking_client(uri)
exp = tracking.ensure_experiment(client, uri, "registry-race")
run_id = client.create_run(exp.experiment_id).info.run_id
assessment = assess_adapter(cfg, adapter, records, tracking_uri=uri)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
p = promote(
    cfg, adapter, assessment, tracking_uri=uri, run_id=run_id, eval_records=records, lock_dir=lock_dir,
    train_records=train_records,
)
Path(out).write_text(json.dumps({
    "version": None if p.version is None else str(p.version.version),
    "reassessed": p.reassessed,
    "first_passed": assessment.verdict.passed,
    "failed": p.assessment.verdict.failed_rules,
}))
"""


@pytest.mark.parametrize("store", ["fresh", "initialised"])
def test_two_concurrent_promotions_have_one_winner(
    store: str, mlflow_server: str, sane: tuple[PipelineConfig, TrainResult, pd.DataFrame], tmp_path: Path
) -> None:
    """Two processes assess the same adapter while there is no champion (both pass), then promote at the same
    moment: under the registry lock the second sees the champion moved, compares again and loses (an adapter
    cannot beat itself). `fresh`: both first open a new SQLite store at once (MLflow's schema migration
    raced there); `initialised`: the real MLflow server."""
    import json
    import os
    import subprocess
    import sys
    import time

    cfg, result, held = sane
    name = f"race-{store}"
    auto = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"auto_promote": True, "registered_model": name})})
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}" if store == "fresh" else mlflow_server
    (tmp_path / "fresh").mkdir()
    (tmp_path / "cfg.json").write_text(auto.model_dump_json())
    held.to_parquet(tmp_path / "held.parquet")
    make_records(64).iloc[:48].to_parquet(tmp_path / "trained.parquet")
    go = tmp_path / "go"
    procs, outs, readies = [], [], []
    for i in range(2):
        out, ready = tmp_path / f"out{i}.json", tmp_path / f"ready{i}"
        outs.append(out)
        readies.append(ready)
        args = [uri, str(result.adapter_dir), str(tmp_path / "held.parquet"), str(tmp_path / "cfg.json")]
        args += [str(ready), str(go), str(out), str(tmp_path / "locks"), str(tmp_path / "trained.parquet")]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        procs.append(subprocess.Popen([sys.executable, "-c", _PROMOTER, *args], env=env, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 600
    while not all(r.exists() for r in readies):
        assert all(p.poll() is None for p in procs), [p.stderr.read().decode()[-3000:] for p in procs if p.stderr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
    results = [json.loads(o.read_text()) for o in outs]
    assert all(r["first_passed"] for r in results)  # both would have won without the lock
    winners = [r for r in results if r["version"] is not None]
    assert len(winners) == 1, results
    loser = next(r for r in results if r["version"] is None)
    assert loser["reassessed"] and loser["failed"] == ["beats_champion"]
    champion = get_alias(uri, name, CHAMPION)
    assert champion is not None and str(champion.version) == winners[0]["version"]
    assert len(MlflowClient(uri).search_model_versions(f"name = '{name}'")) == 1


def test_a_champion_trained_on_the_eval_rows_is_caught_and_one_on_another_base_is_not_comparable(
    mlflow_server: str, sane: tuple[PipelineConfig, TrainResult, pd.DataFrame], tmp_path: Path
) -> None:
    """The champion's run recorded that it trained on rows that are this run's eval rows: the leakage rule fails,
    naming the champion. Then the champion's registry record says another base: the verdict is "not comparable"."""
    cfg, result, held = sane
    name = "registry-leak"
    auto = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"auto_promote": True, "registered_model": name})})
    first = assess_adapter(auto, result.adapter_dir, held, tracking_uri=mlflow_server)
    champion = promote(
        auto,
        result.adapter_dir,
        first,
        tracking_uri=mlflow_server,
        run_id=_new_run(mlflow_server),
        eval_records=held,
        lock_dir=tmp_path,
        train_records=pd.concat([make_records(64).iloc[:40], held.iloc[[3]]]),  # one eval row among its training rows
    ).version
    assert champion is not None and CHAMPION in champion.aliases

    caught = assess_adapter(
        auto, result.adapter_dir, held, tracking_uri=mlflow_server, train_records=make_records(64).iloc[:48]
    )
    assert "no_eval_leakage" in caught.verdict.failed_rules
    rule = next(r for r in caught.verdict.rules if r.name == "no_eval_leakage")
    assert rule.value == 1.0
    assert f"champion version {champion.version}'s training rows: 1 (eval task ids {int(held['task_id'].iloc[3])})" in (
        rule.detail
    )
    assert "this run's training rows: none" in rule.detail

    MlflowClient(mlflow_server).set_model_version_tag(name, champion.version, TAG_BASE_WEIGHTS, "0" * 64)
    other = assess_adapter(auto, result.adapter_dir, held, tracking_uri=mlflow_server)
    assert not other.verdict.passed
    assert other.verdict.headline.startswith(f"NOT COMPARABLE (champion version {champion.version} was trained on")
    assert "beats_champion" in other.verdict.failed_rules
    assert "NOT COMPARABLE" in other.report_markdown()
