"""`lora-pipeline serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine.

Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream: true` as
server-sent events, `data: {...}` chunks then `data: [DONE]`), `GET /health`. The request's `model` is `base`,
`NAME@ALIAS` or `NAME/VERSION`; the version that answered is in the `X-Lora-Model` response header. Decoding
is greedy with the training chat template, so answers equal `lora-pipeline chat`'s; a completion's `prompt` is
one user turn of that template too. Errors are OpenAI-shaped: `{"error": {"message", "type", "code"}}`.
With `--engine vllm` the same routes, names and pool front vLLM's server (`vllm_engine`): a request is checked
here, then forwarded to vLLM with `model` replaced by the leased version's lora name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from transformers import AutoConfig

from pipeline.chat_format import chat_template, load_tokenizer
from pipeline.config import SAFE_LOADING, ModelConfig
from pipeline.serve.adapter_pool import AdapterPool, AdapterRefused, Lease, RegistryUnavailable, UnknownModel
from pipeline.serve.engine import BatchEngine, Generation
from pipeline.serve.vllm_engine import (
    VllmEngine,
    check_vllm_available,
    forward,
    free_port,
    launch_vllm,
    stop_vllm,
    vllm_command,
)
from pipeline.train.modeling import fingerprint_base, load_base_model, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What `lora-pipeline serve` was asked for."""

    base_model: str
    tracking_uri: str | None
    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_adapters: int = 8
    poll_s: float = 5.0
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    preload: tuple[str, ...] = ()
    loading: ModelConfig = SAFE_LOADING
    engine: Literal["torch", "vllm"] = "torch"
    vllm_url: str | None = None  # vllm: attach to this running server instead of starting one
    max_lora_rank: int = 16  # vllm: --max-lora-rank (its LoRA buffers are sized for it)
    vllm_args: tuple[str, ...] = ()  # vllm: more arguments for its server
    vllm_startup_s: float = 900.0


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    model: str
    max_tokens: int = Field(128, ge=1)
    stream: bool = False
    temperature: float | None = None
    n: int = 1


class ChatRequest(_Sampling):
    messages: list[Message]


class CompletionRequest(_Sampling):
    prompt: str


class ServeError(Exception):
    """An error answered as OpenAI's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


@dataclass
class Server:
    """The model, tokenizer, engine and adapter pool behind the routes."""

    engine: BatchEngine | VllmEngine
    pool: AdapterPool

    @classmethod
    def start(cls, opts: ServeOptions) -> Server:
        if opts.engine == "vllm":
            return cls._start_vllm(opts)
        device = resolve_device(opts.device)
        tokenizer = load_tokenizer(opts.base_model, trust_remote_code=opts.loading.trust_remote_code)
        base = load_base_model(opts.base_model, device, loading=opts.loading)
        served = asdict(fingerprint_base(opts.base_model, base, tokenizer))  # once: adapters compare to it
        engine = BatchEngine(base, tokenizer, max_batch=opts.max_batch, batch_wait_s=opts.batch_wait_ms / 1000)
        return cls._with_pool(engine, served, opts, "torch")

    @classmethod
    def _with_pool(
        cls,
        engine: BatchEngine | VllmEngine,
        served: dict[str, Any],
        opts: ServeOptions,
        kind: Literal["torch", "vllm"],
    ) -> Server:
        """The adapter pool over `engine`, with `opts.preload` loaded; a failed preload closes both."""
        pool = AdapterPool(
            engine,
            served,
            tracking_uri=opts.tracking_uri,
            work_dir=opts.work_dir,
            max_adapters=opts.max_adapters,
            poll_s=opts.poll_s,
            engine_kind=kind,
        )
        server = cls(engine, pool)
        try:
            for model in opts.preload:
                pool.acquire(model).release()
        except BaseException:
            server.close()
            raise
        return server

    @classmethod
    def _start_vllm(cls, opts: ServeOptions) -> Server:
        """vLLM (started here, or the one at `vllm_url`) with the pool driving its runtime LoRA API."""
        if opts.vllm_url is None:
            check_vllm_available()  # before loading anything
        tokenizer = load_tokenizer(opts.base_model, trust_remote_code=opts.loading.trust_remote_code)
        # The fingerprint needs the base's config (hub revision) and files, not its weights in this process.
        config = AutoConfig.from_pretrained(opts.base_model, trust_remote_code=opts.loading.trust_remote_code)
        served = asdict(fingerprint_base(opts.base_model, SimpleNamespace(config=config), tokenizer))  # type: ignore[arg-type]
        process = None
        url = opts.vllm_url
        if url is None:
            port = free_port()
            cmd = vllm_command(
                opts.base_model,
                port=port,
                max_loras=opts.max_adapters,
                max_lora_rank=opts.max_lora_rank,
                extra_args=opts.vllm_args,
            )
            print(f"starting vLLM: {' '.join(cmd)}", file=sys.stderr, flush=True)
            process = launch_vllm(cmd, opts.work_dir / "vllm.log", timeout_s=opts.vllm_startup_s)
            url = f"http://127.0.0.1:{port}"
        try:
            engine = VllmEngine(url, opts.base_model, tokenizer, max_lora_rank=opts.max_lora_rank, process=process)
        except BaseException:
            if process is not None:
                stop_vllm(process)
            raise
        return cls._with_pool(engine, served, opts, "vllm")

    def close(self) -> None:
        self.pool.close()
        self.engine.close()

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The conversation as training rendered it (chat template, generation prompt last), as token ids."""
        if not messages or messages[-1].role != "user":
            raise ServeError(400, "the last message must be the user's", "invalid_request_error", "messages")
        if not messages[-1].content.strip():
            raise ServeError(400, "the prompt is empty; send a question", "invalid_request_error", "messages")
        tok = self.engine.tokenizer
        text = tok.apply_chat_template(
            [m.model_dump() for m in messages],
            chat_template=chat_template(tok),
            tokenize=False,
            add_generation_prompt=True,
        )
        return tok(text, add_special_tokens=False)["input_ids"]


def _check_sampling(req: _Sampling) -> None:
    if req.temperature not in (None, 0, 0.0):
        raise ServeError(
            400,
            f"temperature={req.temperature}: this server decodes greedily; send temperature 0 or leave it out",
            "invalid_request_error",
            "temperature",
        )
    if req.n != 1:
        raise ServeError(400, f"n={req.n}: greedy decoding gives one answer; send n=1", "invalid_request_error", "n")


def _error(e: ServeError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": None, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


async def _lease(server: Server, model: str) -> Lease:
    try:
        return await run_in_threadpool(server.pool.acquire, model)
    except UnknownModel as e:
        raise ServeError(404, str(e), "invalid_request_error", "model_not_found") from None
    except AdapterRefused as e:
        raise ServeError(409, str(e), "invalid_request_error", "adapter_refused") from None
    except RegistryUnavailable as e:
        raise ServeError(503, str(e), "server_error", "registry_unavailable") from None


def _start(
    server: Server, lease: Lease, ids: list[int], max_tokens: int
) -> tuple[Generation, asyncio.Queue[tuple[str, Any]]]:
    """Queue the generation; its events (("text", piece), ("done", (text, reason, n)), ("error", e)) arrive on
    the returned queue. The lease is released by the engine thread when the row is finished."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    def done(text: str, reason: str, n: int) -> None:
        lease.release()
        put("done", (text, reason, n))

    def failed(e: BaseException) -> None:
        lease.release()
        put("error", e)

    gen = Generation(ids, lease.adapter, max_tokens, lambda s: put("text", s), done, failed)
    try:
        server.engine.submit(gen)
    except ValueError as e:
        lease.release()
        raise ServeError(400, str(e), "invalid_request_error", "context_length_exceeded") from None
    return gen, events


def create_app(server: Server) -> FastAPI:
    """The FastAPI app over a started `Server`."""
    app = FastAPI(title="lora-pipeline serve")

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, e: ServeError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(ServeError(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters": server.engine.adapters()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        # `version` (registry version served) and `in_use` (requests holding it) are extras OpenAI clients ignore.
        data = [
            {"id": m["id"], "object": "model", "created": 0, "owned_by": "lora-pipeline", **m}
            for m in server.pool.models()
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/events")
    async def events() -> dict[str, Any]:
        return {"events": list(server.pool.events)}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        _check_sampling(req)
        ids = server.prompt_ids(req.messages)
        if isinstance(server.engine, VllmEngine):
            body = {"messages": [m.model_dump() for m in req.messages], "max_tokens": req.max_tokens}
            return await _forward(server, server.engine, req, "/v1/chat/completions", body, chat=True)
        return await _respond(server, req, ids, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        _check_sampling(req)
        ids = server.prompt_ids([Message(role="user", content=req.prompt)])
        if isinstance(server.engine, VllmEngine):  # the prompt as one user turn, as token ids
            body = {"prompt": ids, "max_tokens": req.max_tokens}
            return await _forward(server, server.engine, req, "/v1/completions", body, chat=False)
        return await _respond(server, req, ids, chat=False)

    return app


async def _forward(
    server: Server, engine: VllmEngine, req: _Sampling, path: str, body: dict[str, Any], *, chat: bool
) -> JSONResponse | StreamingResponse:
    lease = await _lease(server, req.model)
    upstream = engine.request_body(lease, {**body, "stream": req.stream}, chat=chat)
    return await forward(engine, lease, path, upstream, requested=req.model)


async def _respond(server: Server, req: _Sampling, ids: list[int], *, chat: bool) -> JSONResponse | StreamingResponse:
    lease = await _lease(server, req.model)
    gen, events = _start(server, lease, ids, req.max_tokens)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    headers = {"X-Lora-Model": lease.model_id}
    obj = "chat.completion" if chat else "text_completion"

    def choice(text: str | None, reason: str | None, *, first: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    if req.stream:

        async def sse() -> AsyncIterator[str]:
            head = {"id": rid, "object": f"{obj}.chunk" if chat else obj, "created": created, "model": req.model}
            try:
                if chat:
                    yield f"data: {json.dumps({**head, 'choices': [choice('', None, first=True)]})}\n\n"
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        yield f"data: {json.dumps({**head, 'choices': [choice(value, None)]})}\n\n"
                    elif kind == "done":
                        yield f"data: {json.dumps({**head, 'choices': [choice(None, value[1])]})}\n\n"
                        break
                    else:
                        err = {"error": {"message": str(value), "type": "server_error", "param": None, "code": None}}
                        yield f"data: {json.dumps(err)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                gen.cancelled = True  # a client that left stops its row at the next step (no-op once finished)

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    while True:
        kind, value = await events.get()
        if kind == "done":
            break
        if kind == "error":
            raise ServeError(500, f"generation failed: {value}", "server_error")
    text, reason, n = value
    if chat:
        answer: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        answer |= {"logprobs": None, "finish_reason": reason}
    else:
        answer = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    body = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": req.model,
        "choices": [answer],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n},
    }
    return JSONResponse(body, headers=headers)


def serve(opts: ServeOptions) -> int:
    """Load the base (and any `--preload` models), then serve until interrupted."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Server.start(opts)
    try:
        uvicorn.run(create_app(server), host=opts.host, port=opts.port, log_level="warning")
    finally:
        server.close()
    return 0
