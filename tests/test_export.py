"""`lora-pipeline export ADAPTER --merged OUT`: the merged model computes what base + adapter computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.train.manifest import MANIFEST
from pipeline.train.merge import adapter_base_model, export_merged, merge_into
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few high-LR steps of DoRA-free all-linear LoRA, so the adapter visibly changes the logits."""
    cfg = load_config(
        base_model=str(tiny_model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 1e-2, "epochs": 1, "batch_size": 4, "max_steps": 3, "device": "cpu"},
    )
    records = make_records(12)
    out = tmp_path_factory.mktemp("export") / "adapter"
    train_adapter(cfg, records, records.iloc[:0], out)
    return out


def test_export_merged_logits_equal_base_plus_adapter(
    trained_adapter: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI writes a standalone model whose logits match PeftModel(base, adapter) and differ from the base."""
    merged_dir = tmp_path / "merged"
    assert main(["export", str(trained_adapter), "--merged", str(merged_dir)]) == 0
    assert "merged model saved" in capsys.readouterr().out
    assert not any(p.name.startswith("adapter_") for p in merged_dir.iterdir())  # a plain model, no PEFT files
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 2]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(trained_adapter)).eval()(input_ids=ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()(input_ids=ids).logits
    assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-4)
    assert (merged_dir / "tokenizer_config.json").is_file()


def test_merge_into_a_4bit_base_is_refused(trained_adapter: Path, tiny_model_dir: Path) -> None:
    """A quantized base is never merged into (the update would be re-quantized away): the error says what to do.

    bitsandbytes does not run on CPU, so the base carries the flag transformers sets on 4-bit models."""
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    base.is_loaded_in_4bit = True
    model = PeftModel.from_pretrained(base, str(trained_adapter))
    with pytest.raises(ValueError, match=r"refusing to merge .* 4-bit/8-bit quantized base.*full precision"):
        merge_into(model)


def test_export_of_a_missing_adapter_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory that is not an adapter gives exit code 2 and a message naming it."""
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "out")]) == 2
    assert "is not a PEFT adapter directory" in capsys.readouterr().err


def test_export_onto_another_base_is_refused_by_the_manifest_check(trained_adapter: Path, tmp_path: Path) -> None:
    """Merging into a base other than the one in the manifest fails before anything is written."""
    other = build_tiny_model(tmp_path / "other-base", pretrain_steps=5, seed=1)
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match="weights_hash does not match"):
        export_merged(trained_adapter, out, base_model=str(other))
    assert not out.exists()


def test_export_resolves_a_model_store_reference(
    trained_adapter: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry download names its base `model-store:DIR` (pipeline/base_model.py): export opens it in the store
    of $LORA_PIPELINE_MODEL_STORE, and says which variable to set when it cannot."""
    downloaded = tmp_path / "peft"
    shutil.copytree(trained_adapter, downloaded)
    (downloaded / MANIFEST).unlink()  # a registry download's peft/ folder: PEFT's adapter_config.json names the base
    cfg = json.loads((downloaded / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = f"model-store:{tiny_model_dir.name}"
    (downloaded / "adapter_config.json").write_text(json.dumps(cfg))
    monkeypatch.delenv("LORA_PIPELINE_MODEL_STORE", raising=False)
    with pytest.raises(ValueError, match="LORA_PIPELINE_MODEL_STORE is not set"):
        adapter_base_model(downloaded)
    monkeypatch.setenv("LORA_PIPELINE_MODEL_STORE", str(tiny_model_dir.parent))
    assert Path(adapter_base_model(downloaded)) == tiny_model_dir
    assert main(["export", str(downloaded), "--merged", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()
