"""`lora-pipeline serve` argument handling that needs no model or server (fast)."""

from __future__ import annotations

import pytest

from pipeline.cli import build_parser, main


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.poll_s, args.max_adapters, args.engine) == ("127.0.0.1", 8000, 5.0, 8, "torch")
    assert args.preload == [] and args.base_model is None


def test_engine_vllm_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm is not implemented" in err and "Traceback" not in err
