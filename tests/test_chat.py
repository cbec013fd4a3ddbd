"""`lora-pipeline chat` through its real entry point against a champion in a real MLflow server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.chat_format import load_tokenizer
from pipeline.config import PipelineConfig, load_config
from pipeline.evaluate.forgetting import load_verified_adapter
from pipeline.evaluate.task_eval import greedy_generate
from pipeline.serve.chat import prompt_text
from pipeline.track.registry import CHAMPION, register_adapter
from pipeline.train.modeling import load_base_model
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODEL = "chat-test"
PROMPT = "When does the first ferry leave on Sunday?"


@pytest.fixture(scope="module")
def champion(mlflow_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A trained adapter registered as `chat-test@champion`; returns (adapter dir, tracking URL)."""
    records = make_records(32)
    cfg = load_config(
        base_model=str(tiny_model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0},
        train={"learning_rate": 3e-3, "epochs": 2, "batch_size": 8},
    )
    result = train_adapter(cfg, records, records.iloc[:0], tmp_path_factory.mktemp("chat-adapter"))
    model, tok = load_verified_adapter(cfg, result.adapter_dir)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(MODEL) or client.get_experiment(client.create_experiment(MODEL))
    run_id = client.create_run(exp.experiment_id).info.run_id
    register_adapter(
        mlflow_server,
        run_id,
        model,
        tok,
        name=MODEL,
        alias=CHAMPION,
        base_model=str(tiny_model_dir),
        manifest=result.manifest,
    )
    return result.adapter_dir, mlflow_server


def _chat(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "chat", "--max-new-tokens", "12", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        input=stdin,
        timeout=300,
    )


def _direct(tiny_model_dir: Path, adapter_dir: Path | None) -> str:
    cfg = PipelineConfig(base_model=str(tiny_model_dir))
    if adapter_dir is None:
        model, tok = load_base_model(str(tiny_model_dir), torch.device("cpu")), load_tokenizer(str(tiny_model_dir))
    else:
        model, tok = load_verified_adapter(cfg, adapter_dir)
    return greedy_generate(model, tok, [prompt_text(tok, PROMPT)], 12)[0]


def test_chat_answers_as_the_champion_and_as_the_base(champion: tuple[Path, str], tiny_model_dir: Path) -> None:
    adapter_dir, url = champion
    ref = f"models:/{MODEL}@{CHAMPION}"
    got = _chat(url, "--adapter", ref, "--prompt", PROMPT)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == _direct(tiny_model_dir, adapter_dir)
    assert f"{MODEL} version 1" in got.stderr

    base = _chat(url, "--adapter", ref, "--base", "--prompt", PROMPT)
    assert base.returncode == 0, base.stderr
    assert base.stdout.strip() == _direct(tiny_model_dir, None)

    # interactive: one question, then an empty line ends the chat
    live = _chat(url, "--adapter", str(adapter_dir), stdin=f"{PROMPT}\n\n")
    assert live.returncode == 0, live.stderr
    assert got.stdout.strip() in live.stdout


def test_chat_refuses_bad_input_in_one_line(champion: tuple[Path, str], tmp_path: Path) -> None:
    adapter_dir, url = champion
    unknown = _chat(url, "--adapter", f"models:/{MODEL}@nobody", "--prompt", PROMPT)
    assert unknown.returncode == 2 and "has no alias 'nobody'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    empty = _chat(url, "--adapter", str(adapter_dir), "--prompt", "   ")
    assert empty.returncode == 2 and "prompt is empty" in empty.stderr

    # an adapter whose manifest says it was trained on other base weights
    other = tmp_path / "other-base-adapter"
    shutil.copytree(adapter_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_model"]["weights_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    wrong = _chat(url, "--adapter", str(other), "--prompt", PROMPT)
    assert wrong.returncode == 2 and "does not match base model" in wrong.stderr
    assert "Traceback" not in wrong.stderr
