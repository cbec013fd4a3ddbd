"""A model a reviewer can load elsewhere: the registry records the base portably (hub id, or a path relative to the
model store), and a copied tracking store plus a copied model store still load the champion, with the same answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from peft import PeftModel

from pipeline.base_model import MODEL_STORE_ENV, BaseModelError, BaseRef, portable_base, resolve_base
from pipeline.ingest.server import free_port
from pipeline.track.review import load_snippet, version_description
from tests.conftest import make_records, start_mlflow_server, stop_mlflow_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = "portable-test"
PROMPT = "When does the first ferry leave on Sunday?"


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_portable_reference_of_hub_ids_store_models_and_other_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "models"
    inside = _model_dir(store / "org" / "base-1")
    outside = _model_dir(tmp_path / "elsewhere" / "base-2")
    monkeypatch.setenv(MODEL_STORE_ENV, str(store))

    assert portable_base("Qwen/Qwen2.5-0.5B-Instruct") == BaseRef("Qwen/Qwen2.5-0.5B-Instruct", True)
    assert portable_base(str(inside)) == BaseRef("model-store:org/base-1", True)
    # A relative spelling of a directory in the store is the same reference.
    monkeypatch.chdir(store)
    assert portable_base("org/base-1").ref == "model-store:org/base-1"
    # Outside the store: the absolute path, marked not portable (never passed off as portable).
    far = portable_base(str(outside))
    assert far.ref == str(outside.resolve()) and not far.portable
    assert portable_base("model-store:org/base-1").ref == "model-store:org/base-1"
    # A store entry that links to a directory elsewhere is still named by its place in the store.
    (store / "linked").symlink_to(outside)
    assert portable_base(str(store / "linked")) == BaseRef("model-store:linked", True)
    # No store declared: every local directory is a machine path.
    monkeypatch.delenv(MODEL_STORE_ENV)
    assert not portable_base(str(inside)).portable


def test_resolve_base_finds_store_references_and_names_the_variable_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "models"
    inside = _model_dir(store / "org" / "base-1")
    monkeypatch.setenv(MODEL_STORE_ENV, str(store))
    assert resolve_base("model-store:org/base-1") == str(inside)
    assert resolve_base("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_base(str(inside)) == str(inside)

    with pytest.raises(BaseModelError, match=f"not in the model store {MODEL_STORE_ENV}="):
        resolve_base("model-store:org/missing")
    for bad in ("model-store:", "model-store:../outside", "model-store:/abs"):
        with pytest.raises(BaseModelError, match="not a path inside the model store"):
            resolve_base(bad)
    with pytest.raises(BaseModelError, match="not portable"):
        resolve_base(str(tmp_path / "gone"))
    monkeypatch.delenv(MODEL_STORE_ENV)
    with pytest.raises(BaseModelError, match=f"{MODEL_STORE_ENV} is not set") as e:
        resolve_base("model-store:org/base-1")
    assert "\n" not in str(e.value)


def test_load_snippets_name_the_portable_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "models"
    inside = _model_dir(store / "base-1")
    outside = _model_dir(tmp_path / "elsewhere")
    monkeypatch.setenv(MODEL_STORE_ENV, str(store))

    registered = "\n".join(load_snippet(str(inside), run_id="r1", model_uri="models:/m/1"))
    assert 'base_model_path=resolve_base("model-store:base-1")' in registered
    assert "from pipeline.base_model import resolve_base" in registered
    assert str(inside) not in registered
    run = "\n".join(load_snippet(str(inside), run_id="r1"))
    assert 'AutoModelForCausalLM.from_pretrained(resolve_base("model-store:base-1"))' in run

    description = version_description(None, name="m", version="1", base_model=str(inside), run_id="r1")
    assert "base `model-store:base-1`" in description and str(tmp_path) not in description
    hub = "\n".join(load_snippet("org/base", run_id="r1", model_uri="models:/m/1"))
    assert 'load_model("models:/m/1", return_type="components")' in hub and "resolve_base" not in hub
    far = "\n".join(load_snippet(str(outside), run_id="r1", model_uri="models:/m/1"))
    assert "outside the model store" in far


def _answer(url: str, dest: Path) -> str:
    from pipeline.serve.adapter_source import resolve_adapter
    from pipeline.serve.chat import answer, load_chat_model

    source = resolve_adapter(f"models:/{MODEL}@champion", tracking_uri=url, dest=dest)
    return answer(load_chat_model(source, device="cpu"), PROMPT, max_new_tokens=12)


def _text_files_naming(root: Path, needle: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.suffix != ".safetensors" and needle.encode() in p.read_bytes()
    ]


def _chat(url: str, *args: str, drop_store: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "HF_HUB_OFFLINE": "1"}
    if drop_store:
        env.pop(MODEL_STORE_ENV)
    ref = f"models:/{MODEL}@champion"
    cmd = [sys.executable, "-m", "pipeline.cli", "chat", "--adapter", ref, "--prompt", PROMPT, "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_a_copied_tracking_store_and_model_store_still_load_the_champion(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config import load_config
    from pipeline.demo.tiny_model import build_tiny_model
    from pipeline.evaluate.forgetting import load_verified_adapter
    from pipeline.serve.adapter_source import resolve_adapter
    from pipeline.serve.chat import load_chat_model
    from pipeline.track.registry import CHAMPION, TAG_BASE_MODEL, TAG_BASE_PORTABLE, register_adapter
    from pipeline.train.recipe import train_adapter

    store = tmp_path / "site-a" / "models"
    base_dir = store / "tiny-base"
    shutil.copytree(tiny_model_dir, base_dir)
    monkeypatch.setenv(MODEL_STORE_ENV, str(store))
    root = tmp_path / "site-a" / "mlflow"
    root.mkdir(parents=True)

    cfg = load_config(
        base_model=str(base_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0},
        train={"learning_rate": 3e-3, "epochs": 2, "batch_size": 8},
    )
    records = make_records(32)
    result = train_adapter(cfg, records, records.iloc[:0], tmp_path / "adapter")
    model, tok = load_verified_adapter(cfg, result.adapter_dir)

    port = free_port()
    proc = start_mlflow_server(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        client = MlflowClient(url)
        run_id = client.create_run(client.create_experiment(MODEL)).info.run_id
        mv = register_adapter(
            url, run_id, model, tok, name=MODEL, alias=CHAMPION, base_model=str(base_dir), manifest=result.manifest
        )
        assert mv.tags[TAG_BASE_MODEL] == "model-store:tiny-base" and mv.tags[TAG_BASE_PORTABLE] == "true"
        # Nothing the version holds names this machine's directories: MLmodel, PEFT's config and card included.
        files = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{mv.version}", dst_path=str(tmp_path / "v")))
        assert _text_files_naming(files, str(tmp_path)) == []
        mlmodel = yaml.safe_load((files / "MLmodel").read_text())
        assert mlmodel["flavors"]["transformers"]["local_base_model_path"] == "model-store:tiny-base"
        assert mlmodel["metadata"]["base_model"] == "model-store:tiny-base"
        assert mlmodel["metadata"]["base_fingerprint"]["weights_hash"] == result.manifest["base_model"]["weights_hash"]
        peft_config = json.loads((files / "peft" / "adapter_config.json").read_text())
        assert peft_config["base_model_name_or_path"] == "model-store:tiny-base"
        before = _answer(url, tmp_path / "dl-a")

        # A base outside the store registers, loudly, as a machine path marked not portable.
        with pytest.warns(UserWarning, match=MODEL_STORE_ENV):
            local = register_adapter(
                url, run_id, model, tok, name=f"{MODEL}-local", alias=CHAMPION,
                base_model=str(tiny_model_dir), manifest=result.manifest,
            )  # fmt: skip
        assert local.tags[TAG_BASE_MODEL] == str(tiny_model_dir.resolve())
        assert local.tags[TAG_BASE_PORTABLE] == "false"
    finally:
        stop_mlflow_server(proc)

    # Copy both stores to another place, and take the originals away.
    new_root, new_store = tmp_path / "site-b" / "mlflow", tmp_path / "site-b" / "models"
    shutil.copytree(root, new_root)
    shutil.copytree(store, new_store)
    (tmp_path / "site-a").rename(tmp_path / "site-a-gone")
    assert str(tmp_path / "site-a").encode() not in (new_root / "mlflow.db").read_bytes()
    monkeypatch.setenv(MODEL_STORE_ENV, str(new_store))

    port = free_port()
    proc = start_mlflow_server(new_root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        assert MlflowClient(url).get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert _answer(url, tmp_path / "dl-b") == before
        # The load snippet's way: MLflow's loader with the base resolved in the model store.
        mlflow.set_tracking_uri(url)
        components = mlflow.transformers.load_model(
            f"models:/{MODEL}@{CHAMPION}",
            return_type="components",
            base_model_path=resolve_base("model-store:tiny-base"),
        )
        assert isinstance(components["model"], PeftModel)
        # `lora-pipeline chat` against the copies.
        chat = _chat(url, "--max-new-tokens", "12")
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip() == before
        unset = _chat(url, drop_store=True)
        assert unset.returncode == 2 and f"{MODEL_STORE_ENV} is not set" in unset.stderr
        assert "Traceback" not in unset.stderr

        # Another model at the same relative path is refused by the fingerprint check after resolution.
        shutil.rmtree(new_store / "tiny-base")
        build_tiny_model(new_store / "tiny-base", pretrain_steps=0, seed=7)
        source = resolve_adapter(f"models:/{MODEL}@{CHAMPION}", tracking_uri=url, dest=tmp_path / "dl-c")
        with pytest.raises(ValueError, match="does not match base model"):
            load_chat_model(source, device="cpu")
    finally:
        stop_mlflow_server(proc)
