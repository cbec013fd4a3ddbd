"""`lora-pipeline serve` argument handling that needs no model or server (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.ingest.server import free_port


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.poll_s, args.max_adapters, args.engine) == ("127.0.0.1", 8000, 5.0, 8, "torch")
    assert args.preload == [] and args.base_model is None


def test_engine_vllm_without_vllm_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: bench/vllm_serve_check.py checks the real path")
    assert main(["serve", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm needs the vllm package, which is not installed" in err and "Traceback" not in err
    assert main(["serve", "--vllm-url", "http://127.0.0.1:1"]) == 2  # vllm flags without --engine vllm
    assert "are for --engine vllm" in capsys.readouterr().err


def test_an_unreachable_registry_is_a_503_not_a_404(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipeline.serve.adapter_pool import AdapterPool, RegistryUnavailable

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    pool = AdapterPool(None, {}, tracking_uri=f"http://127.0.0.1:{free_port()}", work_dir=tmp_path, poll_s=0)  # type: ignore[arg-type]
    with pytest.raises(RegistryUnavailable, match="registry"):
        pool.acquire("lora-adapter@champion")
    assert pool.acquire("base").model_id == "base"  # the base needs no registry
