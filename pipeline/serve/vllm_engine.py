"""`lora-pipeline serve --engine vllm`: vLLM's OpenAI server as a child process, driven by the same adapter pool.

`launch_vllm` checks that `vllm` imports and CUDA is present (else one `ValueError` naming what is missing),
starts `python -m vllm.entrypoints.openai.api_server --enable-lora` on a loopback port with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, waits for its `/health` (with progress), and makes the kernel kill it
when serve dies (PR_SET_PDEATHSIG, its own process group). `VllmEngine` is what `AdapterPool` drives instead of
the torch `BatchEngine`: adding an adapter is vLLM's runtime `POST /v1/load_lora_adapter` (then one canary
prompt through vLLM), deleting it `POST /v1/unload_lora_adapter`. `forward` sends a request of our FastAPI front
to vLLM with `model` replaced by the leased version's lora name (or vLLM's base name), streams included.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import PreTrainedTokenizerBase

from pipeline.serve.adapter_pool import Lease
from pipeline.serve.canary import CANARY_PROMPT
from pipeline.serve.multi_lora import BASE

_PR_SET_PDEATHSIG = 1


class VllmError(RuntimeError):
    """vLLM refused a call or could not be reached (the pool turns a failed load into AdapterRefused)."""


def check_vllm_available() -> None:
    """Raise ValueError (one line) unless `vllm` is importable and CUDA is available; loads nothing."""
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "--engine vllm needs the vllm package, which is not installed (pip install vllm on a CUDA machine); "
            "use --engine torch, or --vllm-url to attach to a vLLM server started elsewhere"
        )
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "--engine vllm needs a CUDA GPU, and torch.cuda.is_available() is False here; use --engine torch, "
            "or --vllm-url to attach to a vLLM server started elsewhere"
        )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In the child: the kernel sends SIGTERM when the process that started it dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    """A TCP port on loopback that is free right now (for vLLM's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_command(
    base_model: str, *, port: int, max_loras: int, max_lora_rank: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """The command line of vLLM's OpenAI server with runtime LoRA loading, on 127.0.0.1:`port`."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base_model, "--enable-lora"]
    cmd += ["--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
    return [*cmd, "--host", "127.0.0.1", "--port", str(port), *extra_args]


def launch_vllm(cmd: list[str], log_path: Path, *, timeout_s: float = 900.0) -> subprocess.Popen[bytes]:
    """Start vLLM's server (`vllm_command`) and wait until its /health answers 200; stop it and raise VllmError
    with its log tail if it exits or does not answer within `timeout_s`."""
    port = cmd[cmd.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
        )
    started = time.monotonic()
    next_note = started + 15
    while True:
        if proc.poll() is not None:
            raise VllmError(f"vLLM exited with code {proc.returncode} while starting; log tail:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return proc
        if time.monotonic() - started > timeout_s:
            stop_vllm(proc)
            raise VllmError(f"vLLM did not answer {url}/health within {timeout_s:.0f} s; log tail:\n{_tail(log_path)}")
        if time.monotonic() > next_note:
            print(f"  still starting vLLM ({time.monotonic() - started:.0f} s, log {log_path}) ...", flush=True)
            next_note += 15
        time.sleep(1.0)


def stop_vllm(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM vLLM's process group (its engine workers too), SIGKILL after `timeout_s`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class VllmEngine:
    """vLLM's OpenAI server at `url`, with LoRA adapters loaded and unloaded through its runtime API."""

    def __init__(
        self,
        url: str,
        base_model: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_lora_rank: int,
        process: subprocess.Popen[bytes] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.max_lora_rank = max_lora_rank
        self.process = process
        self.timeout_s = timeout_s
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)
        self._loaded: set[str] = set()
        served = self._call("GET", "/v1/models")["data"]
        self.base_name = str(served[0]["id"])  # what vLLM calls the base (its --model, or --served-model-name)
        root = str(served[0].get("root") or self.base_name)
        if root != base_model:
            raise ValueError(
                f"the vLLM server at {self.url} serves {root!r}, not --base-model {base_model!r}; "
                "pass the base it serves, so that adapters are checked against the weights that run them"
            )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise VllmError(f"vLLM at {self.url} did not answer {method} {path}: {e}") from e
        if r.status_code != 200:
            raise VllmError(f"vLLM answered {method} {path} with HTTP {r.status_code}: {r.text[:500]}")
        try:
            return r.json()
        except ValueError:
            return r.text  # load/unload answer plain text

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load the PEFT adapter in `adapter_dir` into vLLM as lora `name`, then ask it the canary prompt; an
        adapter vLLM cannot load, or that answers nothing, is unloaded again and raises."""
        rank = int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("r", 0))
        if rank > self.max_lora_rank:
            raise ValueError(f"its rank {rank} is over --max-lora-rank {self.max_lora_rank}; restart with a larger one")
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(adapter_dir).resolve())})
        self._loaded.add(name)
        try:
            answer = self._call(
                "POST",
                "/v1/chat/completions",
                {
                    "model": name,
                    "messages": [{"role": "user", "content": CANARY_PROMPT}],
                    "max_tokens": 16,
                    "temperature": 0,
                    **self._template(),
                },
            )
            if not str(answer["choices"][0]["message"].get("content") or "").strip():
                raise ValueError(f"it answered the canary prompt {CANARY_PROMPT!r} with nothing")
        except BaseException:
            self.delete_adapter(name)
            raise

    def delete_adapter(self, name: str) -> None:
        """Unload lora `name` from vLLM; the pool makes sure no request in flight uses it."""
        self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        self._loaded.discard(name)

    def adapters(self) -> list[str]:
        return sorted(self._loaded)

    def close(self) -> None:
        self._client.close()
        if self.process is not None:
            stop_vllm(self.process)

    def _template(self) -> dict[str, Any]:
        """The training chat template, sent with every chat request (vLLM would otherwise use the tokenizer's own,
        or none)."""
        from pipeline.chat_format import chat_template

        return {"chat_template": chat_template(self.tokenizer), "add_generation_prompt": True}

    def request_body(self, lease: Lease, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        """`body` for vLLM: `model` the leased lora (or the base), greedy, the training chat template."""
        model = self.base_name if lease.adapter == BASE else lease.adapter
        return {**body, "model": model, "temperature": 0, **(self._template() if chat else {})}


async def forward(
    engine: VllmEngine, lease: Lease, path: str, body: dict[str, Any], *, requested: str
) -> JSONResponse | StreamingResponse:
    """Send `body` to vLLM's `path` and answer with its reply, `model` set back to what the client asked for; the
    lease is released when the last byte has been passed on (or the client has gone)."""
    client = httpx.AsyncClient(base_url=engine.url, timeout=httpx.Timeout(engine.timeout_s, read=None))
    headers = {"X-Lora-Model": lease.model_id}
    try:
        upstream = await client.send(client.build_request("POST", path, json=body), stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        lease.release()
        err = {
            "message": f"vLLM did not answer: {e}",
            "type": "server_error",
            "param": None,
            "code": "vllm_unavailable",
        }
        return JSONResponse({"error": err}, status_code=502)

    if not body.get("stream") or upstream.status_code != 200:
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
            await client.aclose()
            lease.release()
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = {"error": {"message": raw.decode(errors="replace"), "type": "server_error", "param": None}}
        if upstream.status_code == 200:
            reply["model"] = requested
        return JSONResponse(reply, status_code=upstream.status_code, headers=headers)

    async def sse() -> AsyncIterator[str]:
        try:
            async for line in upstream.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[len("data: ") :])
                    if "model" in chunk:
                        chunk["model"] = requested
                    line = f"data: {json.dumps(chunk)}"
                yield line + "\n"
        finally:
            await upstream.aclose()
            await client.aclose()
            lease.release()

    return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)
