"""`lora-pipeline serve --engine vllm` through its console script, against a real MLflow registry and a stand-in
for vLLM's HTTP API (vLLM needs a CUDA GPU; the real path is checked by `bench/vllm_serve_check.py`).

The stand-in is a real HTTP server on loopback implementing the part of vLLM's OpenAI server that serve uses
(`/health`, `/v1/models`, the runtime `load_lora_adapter` / `unload_lora_adapter`, chat and plain completions,
streamed too); it answers with the lora name that served each request and records every call. Serve attaches to
it with `--vllm-url` (the launch of vLLM itself is what is skipped). Registered versions: v1 `@a`, v2 `@b`,
v3 `@start` and v4 `@target` (one adapter registered four times), v5 a DoRA adapter under `@dora`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from mlflow.tracking import MlflowClient
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from pipeline.config import load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.evaluate.forgetting import load_verified_adapter
from pipeline.ingest.server import free_port
from pipeline.track.registry import register_adapter
from pipeline.train.modeling import load_base_model
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records
from tests.serve_process import serve_process

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "lora-pipeline"
NAME = "serve-vllm"
CHUNK_S = 0.05  # the stand-in streams one chunk (one "token") every CHUNK_S


@dataclass
class StandInVllm:
    """What the stand-in vLLM was asked, and which loras it holds (read and written from its server thread)."""

    base: str
    loaded: dict[str, str] = field(default_factory=dict)  # lora name -> path
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"call", "lora", "time", ...}
    failures: list[str] = field(default_factory=list)

    def record(self, call: str, lora: str, **extra: Any) -> None:
        self.calls.append({"call": call, "lora": lora, "time": time.time(), **extra})

    def of(self, call: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["call"] == call]


def stand_in_app(state: StandInVllm) -> FastAPI:
    """vLLM's OpenAI server as serve uses it; `model` must be the base or a loaded lora, as in vLLM."""
    app = FastAPI()

    def unknown(model: str) -> JSONResponse:
        err = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError", "code": 404}
        return JSONResponse({"error": err}, status_code=404)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": state.base, "object": "model", "root": state.base, "parent": None}]
        data += [{"id": n, "object": "model", "root": p, "parent": state.base} for n, p in state.loaded.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> PlainTextResponse:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if name in state.loaded:
            return PlainTextResponse(f"The lora adapter '{name}' has already been loaded.", status_code=400)
        if not (Path(path) / "adapter_config.json").is_file():
            return PlainTextResponse(f"No adapter found at {path}", status_code=400)
        state.loaded[name] = path
        state.record("load", name, path=path)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> PlainTextResponse:
        name = (await request.json())["lora_name"]
        if state.loaded.pop(name, None) is None:
            return PlainTextResponse(f"The lora adapter '{name}' cannot be found.", status_code=404)
        state.record("unload", name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        model = body["model"]
        if model != state.base and model not in state.loaded:
            return unknown(model)
        state.record("chat", model, stream=bool(body.get("stream")), body=body)
        if not body.get("stream"):
            message = {"role": "assistant", "content": f"served by {model}"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({"id": "chatcmpl-1", "object": "chat.completion", "model": model, "choices": [choice]})

        async def sse() -> AsyncIterator[str]:
            head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model}
            for i in range(body["max_tokens"]):
                if model != state.base and model not in state.loaded:  # vLLM would fail the request here
                    state.failures.append(f"{model} unloaded while a stream on it was in flight")
                    yield f"data: {json.dumps({'error': {'message': 'lora unloaded'}})}\n\n"
                    return
                delta = {"content": f"{model} " if i else f"served by {model} "}
                yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
                await asyncio.sleep(CHUNK_S)
            last = {"index": 0, "delta": {}, "finish_reason": "length"}
            yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n"
            state.record("stream-end", model)
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        model = body["model"]
        if model != state.base and model not in state.loaded:
            return unknown(model)
        state.record("completion", model, body=body)
        choice = {"index": 0, "text": f"served by {model}", "finish_reason": "stop"}
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "model": model, "choices": [choice]})

    return app


@dataclass
class Registered:
    url: str
    base: Path
    versions: dict[str, int]  # alias -> version


@pytest.fixture(scope="module")
def registered(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """One adapter trained briefly on a tiny base, registered as v1-v4 under four aliases; v5 a DoRA adapter."""
    base = build_tiny_model(tmp_path_factory.mktemp("vllm-base"), pretrain_steps=10, seed=0)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(NAME) or client.get_experiment(client.create_experiment(NAME))
    cfg = load_config(
        base_model=str(base),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0},
        train={"learning_rate": 1e-2, "epochs": 1, "batch_size": 8},
    )
    records = make_records(8)
    result = train_adapter(cfg, records, records.iloc[:0], tmp_path_factory.mktemp("vllm-adapter"))
    model, tok = load_verified_adapter(cfg, result.adapter_dir)
    versions = {}
    for alias in ("a", "b", "start", "target"):
        run_id = client.create_run(exp.experiment_id).info.run_id
        mv = register_adapter(
            mlflow_server, run_id, model, tok, name=NAME, alias=alias, base_model=str(base), manifest=result.manifest
        )
        versions[alias] = int(mv.version)
    torch.manual_seed(0)
    dora_config = PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    dora = get_peft_model(load_base_model(str(base), torch.device("cpu")), dora_config)
    run_id = client.create_run(exp.experiment_id).info.run_id
    mv = register_adapter(
        mlflow_server, run_id, dora, tok, name=NAME, alias="dora", base_model=str(base), manifest=result.manifest
    )
    versions["dora"] = int(mv.version)
    return Registered(mlflow_server, base, versions)


@pytest.fixture(scope="module")
def vllm(registered: Registered) -> Iterator[tuple[str, StandInVllm]]:
    """The stand-in vLLM on a free loopback port, serving the registered adapters' base; yields (URL, state)."""
    state = StandInVllm(str(registered.base))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stand_in_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="stand-in-vllm", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the stand-in vLLM did not start"
        time.sleep(0.05)
    try:
        yield url, state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(
    registered: Registered, vllm: tuple[str, StandInVllm], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`lora-pipeline serve --engine vllm --vllm-url STAND-IN` (the console script) on loopback; yields /v1."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.url, "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("vllm-serve-log") / "serve.log"
    cmd = [str(CLI), "serve", "--engine", "vllm", "--vllm-url", vllm[0], "--port", str(port)]
    cmd += ["--base-model", str(registered.base), "--poll-s", "0.3", "--max-adapters", "2"]
    with serve_process(cmd, env, port, log, ready_s=120) as url:
        yield url


def _chat(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "When does the ferry leave?"}], **extra}
    return httpx.post(f"{url}/chat/completions", json={"max_tokens": 8, **body}, timeout=60)


def _stream(url: str, model: str, chunks: int) -> tuple[list[dict[str, Any]], str, str]:
    """(the streamed chunks, the X-Lora-Model header, the last line) of a streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": chunks, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line]
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]], r.headers["x-lora-model"], lines[-1]


def _events(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/events", timeout=10).json()["events"]


def test_requests_reach_vllm_with_each_versions_lora_name(
    server: str, vllm: tuple[str, StandInVllm], registered: Registered
) -> None:
    _, state = vllm
    v = registered.versions
    for alias in ("a", "b"):
        r = _chat(server, f"{NAME}@{alias}")
        assert r.status_code == 200, r.text
        lora = f"{NAME}/{v[alias]}"
        assert r.headers["x-lora-model"] == lora and r.json()["model"] == f"{NAME}@{alias}"
        assert r.json()["choices"][0]["message"]["content"] == f"served by {lora}"
        load = next(c for c in state.of("load") if c["lora"] == lora)
        assert load["path"].endswith("peft")  # the downloaded PEFT directory
        sent = [c["body"] for c in state.of("chat") if c["lora"] == lora][-1]
        assert sent["temperature"] == 0 and sent["chat_template"] and sent["messages"][-1]["role"] == "user"

    base = _chat(server, "base")
    assert base.status_code == 200 and base.json()["choices"][0]["message"]["content"] == f"served by {registered.base}"

    # a plain completion by version: the prompt goes as the training template's token ids
    r = httpx.post(f"{server}/completions", json={"model": f"{NAME}/{v['b']}", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == f"served by {NAME}/{v['b']}"
    prompt = state.of("completion")[-1]["body"]["prompt"]
    assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)

    chunks, served, last = _stream(server, f"{NAME}@a", 5)
    assert last == "data: [DONE]" and served == f"{NAME}/{v['a']}"
    assert all(c["model"] == f"{NAME}@a" for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).startswith(f"served by {NAME}/{v['a']}")

    # each load was followed by a canary prompt through vLLM before it served
    canaries = [c for c in state.of("chat") if "Say hello" in c["body"]["messages"][-1]["content"]]
    assert {c["lora"] for c in canaries} >= {f"{NAME}/{v['a']}", f"{NAME}/{v['b']}"}


def test_alias_move_loads_new_then_unloads_old_after_the_stream(
    server: str, vllm: tuple[str, StandInVllm], registered: Registered
) -> None:
    _, state = vllm
    client = MlflowClient(registered.url)
    old, new = f"{NAME}/{registered.versions['start']}", f"{NAME}/{registered.versions['target']}"
    for alias in ("a", "b"):  # two loaded already, so that loading more evicts (--max-adapters 2)
        assert _chat(server, f"{NAME}@{alias}").status_code == 200
    client.set_registered_model_alias(NAME, "live", registered.versions["start"])
    try:
        assert _chat(server, f"{NAME}@live").headers["x-lora-model"] == old
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_stream, server, f"{NAME}@live", 60)  # ~3 s
            time.sleep(0.3)
            client.set_registered_model_alias(NAME, "live", registered.versions["target"])
            deadline = time.monotonic() + 30
            while not (moved := [e for e in _events(server) if e["event"] == "alias" and e.get("alias") == "live"]):
                assert time.monotonic() < deadline, "the alias move was not followed"
                time.sleep(0.1)
            assert old in state.loaded, "the old version was unloaded while a stream held it"
            chunks, served, last = in_flight.result()
        assert served == old and last == "data: [DONE]" and len(chunks) == 61
        assert not state.failures
        r = _chat(server, f"{NAME}@live")
        assert r.status_code == 200 and r.headers["x-lora-model"] == new
        deadline = time.monotonic() + 10
        while old in state.loaded:
            assert time.monotonic() < deadline, "the replaced version was never unloaded"
            time.sleep(0.1)
        load_new = max(c["time"] for c in state.of("load") if c["lora"] == new)
        unload_old = max(c["time"] for c in state.of("unload") if c["lora"] == old)
        stream_end = max(c["time"] for c in state.of("stream-end") if c["lora"] == old)
        assert load_new <= moved[0]["time"] < stream_end <= unload_old
        assert any(e["event"] == "unloaded" and e["model"] == old for e in _events(server))
    finally:
        client.delete_registered_model_alias(NAME, "live")
    # LRU eviction (--max-adapters 2) unloads from vLLM too: every evicted version left vLLM
    evicted = {e["model"] for e in _events(server) if e["event"] == "evicted"}
    assert evicted and evicted <= {c["lora"] for c in state.of("unload")}
    assert len(state.loaded) <= 2


def test_a_dora_adapter_is_refused_and_never_loaded(
    server: str, vllm: tuple[str, StandInVllm], registered: Registered
) -> None:
    _, state = vllm
    for _ in range(2):
        r = _chat(server, f"{NAME}@dora")
        assert r.status_code == 409, r.text
        assert "--engine vllm" in r.json()["error"]["message"] and "DoRA" in r.json()["error"]["message"]
    dora = f"{NAME}/{registered.versions['dora']}"
    assert all(c["lora"] != dora for c in state.calls)
    assert all(m["id"] != dora for m in httpx.get(f"{server}/models").json()["data"])


def test_engine_vllm_without_vllm_or_cuda_exits_2_in_one_line() -> None:
    try:
        import vllm  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("vllm and CUDA are both present: bench/vllm_serve_check.py checks the real path")
    except ImportError:
        pass
    done = subprocess.run([str(CLI), "serve", "--engine", "vllm"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("lora-pipeline: error: --engine vllm needs ")
    assert "vllm package" in lines[0] or "CUDA" in lines[0]
