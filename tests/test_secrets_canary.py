"""Secrets are never stored: a whole `lora-pipeline run` with canary credentials in every place a user may put
them (the Label Studio token, a password in LABEL_STUDIO_URL, a password in MLFLOW_TRACKING_URI), then every
file it wrote is searched (MLflow store and artifacts, Prefect home and database, work dir) with its captured
output: 0 hits."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from pipeline.config import Settings
from pipeline.demo.runner import seed_project
from pipeline.ingest.client import connect
from pipeline.ingest.server import LocalLabelStudio, free_port
from pipeline.redact import redact, strip_userinfo
from tests.conftest import start_mlflow_server, stop_mlflow_server


def test_redact_and_strip_userinfo() -> None:
    assert (
        redact("GET http://u:p@h:1/x failed; see https://tok@h2/") == "GET http://***@h:1/x failed; see https://***@h2/"
    )
    assert strip_userinfo("http://u:p%40w@host:8080/p?q=1") == ("http://host:8080/p?q=1", "u", "p%40w")
    assert strip_userinfo("http://host/") == ("http://host/", None, None)


def test_settings_take_credentials_out_of_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://user:pw-ls@ls.example:8080")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://me:pw%2Fml@mlflow.example")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = Settings()
    assert s.label_studio_url == "http://ls.example:8080"
    assert any("LABEL_STUDIO_URL carries credentials" in str(w.message) for w in caught)
    assert all("pw-ls" not in str(w.message) for w in caught)
    assert s.mlflow_tracking_uri == "https://mlflow.example"
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "me" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw/ml"


def _files_with(root: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{name} in {f}" for name, needle in needles.items() if needle in data]
    return hits


@pytest.mark.slow
def test_canary_credentials_appear_in_no_file_and_no_output(
    label_studio: LocalLabelStudio, tiny_model_dir: Path, tmp_path: Path
) -> None:
    canary = secrets.token_hex(8)
    client = connect(label_studio.url, label_studio.token)
    seed_project(client, "canary", ("schedules", "tickets", "lost_property", "accessibility"), n=80)
    ml_root = tmp_path / "mlflow"
    ml_root.mkdir()
    ml_port = free_port()
    ml_proc = start_mlflow_server(ml_root, ml_port)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "labelstudio": {"project_title": "canary"},
                "lora": {"r": 4, "alpha": 8.0, "target_modules": "qv"},
                "train": {"learning_rate": 5e-3, "epochs": 1, "batch_size": 8},
                "mlflow": {"experiment": "canary"},
            }
        )
    )
    ls_host = label_studio.url.removeprefix("http://")
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": f"http://lsuser-{canary}:lspass-{canary}@{ls_host}",
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "MLFLOW_TRACKING_URI": f"http://mluser-{canary}:mlpass-{canary}@127.0.0.1:{ml_port}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("PREFECT_API_URL", None)
    lora = Path(sys.executable).parent / "lora-pipeline"
    args = ["run", "--config", str(cfg), "--work-dir", str(tmp_path / "work"), "--base-model", str(tiny_model_dir)]
    try:
        done = subprocess.run(
            [str(lora), *args, "--force"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=900,
        )
    finally:
        stop_mlflow_server(ml_proc)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output.decode()[-4000:]
    assert b"MLflow run" in done.stdout  # it trained, logged and evaluated: every writer ran
    needles = {
        "label studio token": label_studio.token.encode(),
        "password in LABEL_STUDIO_URL": f"lspass-{canary}".encode(),
        "user in LABEL_STUDIO_URL": f"lsuser-{canary}".encode(),
        "password in MLFLOW_TRACKING_URI": f"mlpass-{canary}".encode(),
    }
    hits = [f"{name} in captured output" for name, needle in needles.items() if needle in output]
    for root in (ml_root, tmp_path / "prefect", tmp_path / "work"):
        assert any(root.rglob("*")), f"{root} is empty: the canary would prove nothing"
        hits += _files_with(root, needles)
    assert hits == []
