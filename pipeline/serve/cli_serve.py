"""The `lora-pipeline serve` arguments and how they become `ServeOptions` (no torch import at parser time)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The `serve` subcommand's flags."""
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--base-model",
        help="the base every adapter must fit (default: the base recorded by NAME@champion, else the config's)",
    )
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODEL",
        help="load NAME@ALIAS or NAME/VERSION before serving (repeatable; default: the config's model @champion "
        "when it exists)",
    )
    p.add_argument("--max-adapters", type=int, default=8, help="adapters kept loaded; LRU eviction beyond (default 8)")
    p.add_argument("--poll-s", type=float, default=5.0, help="re-read registry aliases every N seconds (0: never)")
    p.add_argument("--max-batch", type=int, default=32, help="most requests decoded together (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "vllm"],
        help="torch: PyTorch/PEFT mixed-adapter batches (CPU or GPU); vllm: vLLM's OpenAI server with runtime LoRA "
        "loading behind this one (needs the vllm package and a CUDA GPU; docs/serving.md)",
    )
    p.add_argument(
        "--vllm-url",
        help="vllm: attach to a vLLM server already running at this URL (started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, on this machine's filesystem) instead of starting one",
    )
    p.add_argument("--max-lora-rank", type=int, default=16, help="vllm: the largest adapter rank served (default 16)")
    p.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="vllm: one more argument for vLLM's server, e.g. --vllm-arg=--gpu-memory-utilization=0.8 (repeatable)",
    )
    p.add_argument("--vllm-startup-s", type=float, default=900.0, help="vllm: how long to wait for its /health")
    p.add_argument("--work-dir", type=Path, help="where adapters are downloaded (default: a temporary directory)")
    p.add_argument("--config", help="YAML config (registered model name; model: loading permissions)")


def serve_from_args(args: argparse.Namespace) -> int:
    """Run the server the parsed flags describe."""
    from pipeline.base_model import resolve_base
    from pipeline.config import Settings, load_config
    from pipeline.serve.adapter_source import resolve_adapter
    from pipeline.serve.server import ServeOptions, serve
    from pipeline.track.registry import CHAMPION, get_alias

    if args.engine == "vllm" and args.vllm_url is None:
        from pipeline.serve.vllm_engine import check_vllm_available

        check_vllm_available()  # one line naming what is missing, before anything loads
    if args.engine != "vllm" and (args.vllm_url or args.vllm_arg):
        raise ValueError("--vllm-url and --vllm-arg are for --engine vllm; add it, or leave them out")
    config = load_config(args.config)
    tracking_uri = Settings().mlflow_tracking_uri
    preload = list(args.preload)
    champion = f"{config.gate.registered_model}@{CHAMPION}"
    has_champion = get_alias(tracking_uri, config.gate.registered_model, CHAMPION) is not None
    if not preload and has_champion:
        preload = [champion]
    base_model = args.base_model
    if base_model is None and has_champion:
        with tempfile.TemporaryDirectory(prefix="lora-serve-") as tmp:
            recorded = resolve_adapter(f"models:/{champion}", tracking_uri=tracking_uri, dest=tmp).base_model
            base_model = resolve_base(recorded)  # a model-store:... reference -> the directory in the model store
    base_model = base_model or config.base_model
    with tempfile.TemporaryDirectory(prefix="lora-serve-") as tmp:
        opts = ServeOptions(
            base_model=base_model,
            tracking_uri=tracking_uri,
            work_dir=args.work_dir or Path(tmp),
            host=args.host,
            port=args.port,
            device=args.device,
            max_adapters=args.max_adapters,
            poll_s=args.poll_s,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            preload=tuple(preload),
            loading=config.model,
            engine=args.engine,
            vllm_url=args.vllm_url,
            max_lora_rank=args.max_lora_rank,
            vllm_args=tuple(args.vllm_arg),
            vllm_startup_s=args.vllm_startup_s,
        )
        print(f"serving base {base_model} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        return serve(opts)
