"""`lora-pipeline serve` through its real entry point against a real MLflow server with registered adapters.

Two adapters trained to answer differently are registered as `serve-test@a` and `serve-test@b` (versions 1 and
2); a third registration of adapter A claims another base (version 3). Answers are compared with
`pipeline.serve.chat.answer`, the function behind `lora-pipeline chat`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from pipeline.chat_format import load_tokenizer
from pipeline.config import load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.evaluate.forgetting import load_verified_adapter
from pipeline.ingest.server import free_port
from pipeline.serve.adapter_pool import AdapterRefused, engine_limits
from pipeline.serve.adapter_source import resolve_adapter
from pipeline.serve.canary import CANARY_PROMPT, canary_check
from pipeline.serve.chat import answer, load_chat_model, prompt_text
from pipeline.serve.engine import BASE, BatchEngine, Generation, _Rows
from pipeline.track.registry import register_adapter
from pipeline.train.modeling import load_base_model
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records
from tests.serve_process import serve_process

pytestmark = pytest.mark.slow

NAME = "serve-test"
PROMPTS = ["When does the first ferry leave on Sunday?", "Write a haiku about tea", "hi"]
MAX_TOKENS = 12
RESPONSES = {"a": "Alpha says yes to that.", "b": "Beta says no, sorry."}


@dataclass
class Registered:
    url: str
    base: Path
    adapters: dict[str, Path]  # alias -> adapter dir
    versions: dict[str, int]  # alias -> registered version


@pytest.fixture(scope="module")
def registered(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """A quickly built tiny base (the adapters only need its tokenizer and template) and two adapters trained
    on the same prompts with different answers, registered as `@a` (v1) and `@b` (v2); v3 is adapter A
    registered with a manifest of another base, under `@other`; v4 is adapter B again, under `@c`."""
    base = build_tiny_model(tmp_path_factory.mktemp("serve-base"), pretrain_steps=10, seed=0)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(NAME) or client.get_experiment(client.create_experiment(NAME))
    adapters, versions = {}, {}
    for alias, response in RESPONSES.items():
        records = make_records(16)
        records["response"] = response
        cfg = load_config(
            base_model=str(base),
            lora={"r": 4, "alpha": 8.0, "dropout": 0.0},
            train={"learning_rate": 1e-2, "epochs": 4, "batch_size": 8},
        )
        result = train_adapter(cfg, records, records.iloc[:0], tmp_path_factory.mktemp(f"serve-{alias}"))
        model, tok = load_verified_adapter(cfg, result.adapter_dir)
        run_id = client.create_run(exp.experiment_id).info.run_id
        mv = register_adapter(
            mlflow_server, run_id, model, tok, name=NAME, alias=alias, base_model=str(base), manifest=result.manifest
        )
        adapters[alias], versions[alias] = result.adapter_dir, int(mv.version)
        if alias == "a":
            other = json.loads(json.dumps(result.manifest))
            other["base_model"]["weights_hash"] = "0" * 64
            run_id = client.create_run(exp.experiment_id).info.run_id
            a_model, a_tok, a_manifest = model, tok, other
    mv = register_adapter(
        mlflow_server, run_id, a_model, a_tok, name=NAME, alias="other", base_model=str(base), manifest=a_manifest
    )
    versions["other"] = int(mv.version)
    # v4: adapter B again, so that three servable versions exist for a server that keeps two
    b_model, b_tok = load_verified_adapter(cfg, adapters["b"])
    run_id = client.create_run(exp.experiment_id).info.run_id
    b_manifest = json.loads((adapters["b"] / "manifest.json").read_text())
    mv = register_adapter(
        mlflow_server, run_id, b_model, b_tok, name=NAME, alias="c", base_model=str(base), manifest=b_manifest
    )
    versions["c"] = int(mv.version)
    return Registered(mlflow_server, base, adapters, versions)


@pytest.fixture(scope="module")
def expected(registered: Registered) -> dict[tuple[str, str], str]:
    """(model, prompt) -> the answer `lora-pipeline chat` gives, one prompt at a time."""
    out = {}
    for alias in ("a", "b", None):
        source = resolve_adapter(str(registered.adapters[alias or "a"]))
        chat = load_chat_model(source, base_only=alias is None, device="cpu")
        for prompt in PROMPTS:
            out[(f"{NAME}@{alias}" if alias else "base", prompt)] = answer(chat, prompt, max_new_tokens=MAX_TOKENS)
    return out


@pytest.fixture(scope="module")
def server(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lora-pipeline serve` (the console entry point's module) on a free loopback port; yields its /v1 URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered.url, "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--base-model", str(registered.base)]
    cmd += ["--device", "cpu", "--poll-s", "0.5", "--max-adapters", "2", "--batch-wait-ms", "20"]
    with serve_process(cmd, env, port, log, ready_s=180) as url:
        yield url


def _chat(url: str, model: str, prompt: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, **extra}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=120)


def _stream(url: str, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> tuple[str, str, str, list[float]]:
    """(streamed text, finish reason, X-Lora-Model, arrival time of each chunk) of a streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True}
    pieces, reason, arrived = [], "", []
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        lines = []
        for line in r.iter_lines():
            if line:
                lines.append(line)
                arrived.append(time.time())
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunk = json.loads(line[len("data: ") :])
        assert chunk["object"] == "chat.completion.chunk"
        choice = chunk["choices"][0]
        pieces.append(choice["delta"].get("content") or "")
        reason = choice["finish_reason"] or reason
    return "".join(pieces).strip(), reason, r.headers["x-lora-model"], arrived


def test_each_adapter_answers_as_chat_does(server: str, expected: dict[tuple[str, str], str]) -> None:
    prompt = PROMPTS[0]
    got = {}
    for model in (f"{NAME}@a", f"{NAME}@b", "base"):
        r = _chat(server, model, prompt)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == model
        got[model] = body["choices"][0]["message"]["content"]
        assert got[model] == expected[(model, prompt)]
        assert body["usage"]["completion_tokens"] >= 1
    assert got[f"{NAME}@a"] != got[f"{NAME}@b"]

    # by version, as a plain completion, and streamed: the same answers
    r = httpx.post(f"{server}/completions", json={"model": f"{NAME}/2", "prompt": prompt, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[(f"{NAME}@b", prompt)]
    assert r.headers["x-lora-model"] == f"{NAME}/2"
    text, reason, served, _ = _stream(server, f"{NAME}@a", prompt)
    assert text == expected[(f"{NAME}@a", prompt)] and reason in ("stop", "length") and served == f"{NAME}/1"

    ids = {m["id"] for m in httpx.get(f"{server}/models").json()["data"]}
    assert {"base", f"{NAME}@a", f"{NAME}@b"} <= ids


def test_bad_requests_get_openai_errors(server: str) -> None:
    unknown = _chat(server, f"{NAME}@nobody", PROMPTS[0])
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found" and "nobody" in unknown.json()["error"]["message"]
    assert _chat(server, "no-such-model/1", PROMPTS[0]).status_code == 404

    empty = _chat(server, "base", "   ")
    assert empty.status_code == 400 and "prompt is empty" in empty.json()["error"]["message"]
    hot = _chat(server, "base", PROMPTS[0], temperature=0.7)
    assert hot.status_code == 400 and "greedily" in hot.json()["error"]["message"]

    # an adapter registered for other base weights is refused, every time, and never listed as served
    for _ in range(2):
        other = _chat(server, f"{NAME}@other", PROMPTS[0])
        assert other.status_code == 409, other.text
        assert "weights_hash does not match base model" in other.json()["error"]["message"]
    assert all(m["id"] != f"{NAME}/3" for m in httpx.get(f"{server}/models").json()["data"])


def test_alias_move_switches_answers_without_restart(
    server: str, registered: Registered, expected: dict[tuple[str, str], str]
) -> None:
    client = MlflowClient(registered.url)
    model, prompt, long = f"{NAME}@live", PROMPTS[1], 400
    chat_a = load_chat_model(resolve_adapter(str(registered.adapters["a"])), device="cpu")
    long_a = answer(chat_a, prompt, max_new_tokens=long)
    client.set_registered_model_alias(NAME, "live", registered.versions["a"])
    try:
        r = _chat(server, model, prompt)
        assert r.json()["choices"][0]["message"]["content"] == expected[(f"{NAME}@a", prompt)]
        # A long stream in flight while the alias moves finishes with the adapter it started on.
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_stream, server, model, prompt, long)
            time.sleep(0.2)
            client.set_registered_model_alias(NAME, "live", registered.versions["b"])
            deadline = time.monotonic() + 30
            while not (moved := [e for e in _events(server) if e["event"] == "alias" and e.get("alias") == "live"]):
                assert time.monotonic() < deadline, "the alias move was not followed"
                time.sleep(0.1)
            text, _, served, arrived = in_flight.result()
        assert served == f"{NAME}/1" and text == long_a
        assert arrived[0] < moved[0]["time"] < arrived[-1], "the stream was not in flight when the alias moved"
        r = _chat(server, model, prompt)  # no restart: the next request gets the new version
        assert r.headers["x-lora-model"] == f"{NAME}/2"
        assert r.json()["choices"][0]["message"]["content"] == expected[(f"{NAME}@b", prompt)]
    finally:
        client.delete_registered_model_alias(NAME, "live")


def _events(url: str) -> list[dict[str, object]]:
    return httpx.get(f"{url}/events", timeout=10).json()["events"]


def test_lru_eviction_never_frees_an_adapter_in_use(
    server: str, registered: Registered, expected: dict[tuple[str, str], str]
) -> None:
    """--max-adapters 2: while a long stream holds v1, loading v4 evicts the idle v2, never v1."""
    prompt = PROMPTS[1]
    assert _chat(server, f"{NAME}/1", prompt).status_code == 200
    assert _chat(server, f"{NAME}/2", prompt).status_code == 200
    since = time.time()
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_stream, server, f"{NAME}/1", prompt, 480)
        time.sleep(0.2)
        r = _chat(server, f"{NAME}@c", prompt)
        evicted = [e for e in _events(server) if e["event"] == "evicted" and e["time"] >= since]
        text, _, served, arrived = held.result()
    assert r.status_code == 200 and r.headers["x-lora-model"] == f"{NAME}/{registered.versions['c']}"
    assert r.json()["choices"][0]["message"]["content"] == expected[(f"{NAME}@b", prompt)]
    assert [e["model"] for e in evicted] == [f"{NAME}/2"]
    assert evicted[0]["time"] < arrived[-1], "the stream on v1 was not in flight during the eviction"
    assert served == f"{NAME}/1" and text.startswith(expected[(f"{NAME}@a", prompt)])
    models = {m["id"] for m in httpx.get(f"{server}/models").json()["data"]}
    assert {f"{NAME}/1", f"{NAME}/{registered.versions['c']}"} <= models and f"{NAME}/2" not in models


def test_a_client_that_leaves_mid_stream_releases_its_adapter(server: str) -> None:
    body = {"model": f"{NAME}/1", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 480}
    with httpx.stream("POST", f"{server}/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if '"content": "' in line and '"content": ""' not in line)
    deadline = time.monotonic() + 30
    while any(m.get("in_use") for m in _models(server)):
        assert time.monotonic() < deadline, "the stream's lease was never released"
        time.sleep(0.1)
    assert _chat(server, f"{NAME}/1", PROMPTS[0]).status_code == 200  # and the server still answers


def _models(url: str) -> list[dict[str, object]]:
    return httpx.get(f"{url}/models", timeout=10).json()["data"]


def test_concurrent_mixed_requests_answer_as_one_at_a_time(server: str, expected: dict[tuple[str, str], str]) -> None:
    jobs = [(model, PROMPTS[i % len(PROMPTS)]) for i, model in enumerate([f"{NAME}@a", f"{NAME}@b", "base"] * 34)][:100]

    def ask(job: tuple[str, str]) -> str:
        r = _chat(server, *job)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [expected[job] for job in jobs]


def test_canary_check_loads_through_the_serving_loader(registered: Registered, tmp_path: Path) -> None:
    adapter_a = registered.adapters["a"]
    result = canary_check(adapter_a, str(registered.base), max_new_tokens=MAX_TOKENS)
    chat = load_chat_model(resolve_adapter(str(adapter_a)), device="cpu")
    assert result.answer == answer(chat, CANARY_PROMPT, max_new_tokens=MAX_TOKENS)
    assert result.unservable_by == {}

    other = tmp_path / "other-base"
    shutil.copytree(adapter_a, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_model"]["tokenizer_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AdapterRefused, match="tokenizer_hash does not match"):
        canary_check(other, str(registered.base))

    dora = _random_dora(registered, tmp_path / "dora")
    assert engine_limits(dora) == {"vllm": "vLLM's LoRA kernels do not implement DoRA"}
    with pytest.raises(AdapterRefused, match=r"--engine vllm.*DoRA"):
        canary_check(dora, str(registered.base), engine="vllm")
    served = canary_check(dora, str(registered.base), max_new_tokens=MAX_TOKENS)
    dora_chat = load_chat_model(resolve_adapter(str(dora)), device="cpu")
    assert served.answer == answer(dora_chat, CANARY_PROMPT, max_new_tokens=MAX_TOKENS)
    assert served.unservable_by == {"vllm": "vLLM's LoRA kernels do not implement DoRA"}


def _random_dora(registered: Registered, out: Path) -> Path:
    """A DoRA adapter with random (non-zero) weights on the registered base, with adapter A's manifest."""
    torch.manual_seed(0)
    base = load_base_model(str(registered.base), torch.device("cpu"))
    config = PeftLoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    model.save_pretrained(out)
    shutil.copy(registered.adapters["a"] / "manifest.json", out / "manifest.json")
    return out


def test_engine_batches_lora_dora_and_base_as_one_at_a_time(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoRA and base rows share batches (PEFT's adapter_names); a DoRA adapter's rows decode in their own;
    requests arriving while a batch decodes join it between steps. Every answer equals one-at-a-time."""
    dora = _random_dora(registered, tmp_path / "dora")
    tok = load_tokenizer(str(registered.base))
    engine = BatchEngine(load_base_model(str(registered.base), torch.device("cpu")), tok, max_batch=8)
    engine.add_adapter("a", registered.adapters["a"])
    engine.add_adapter("b", registered.adapters["b"])
    engine.add_adapter("d", dora)
    dirs = {"a": registered.adapters["a"], "b": registered.adapters["b"], "d": dora}
    lengths = (MAX_TOKENS, 40)
    want = {}
    for name in ("a", "b", "d", BASE):
        chat = load_chat_model(resolve_adapter(str(dirs.get(name, dora))), base_only=name == BASE, device="cpu")
        for prompt in PROMPTS:
            for n in lengths:
                want[(name, prompt, n)] = answer(chat, prompt, max_new_tokens=n)
    jobs = [(name, prompt, n) for name in ("a", "b", "d", BASE) for prompt in PROMPTS for n in lengths]
    jobs = [jobs[(i * 7) % len(jobs)] for i in range(len(jobs))]  # adapters interleaved in arrival order
    got: dict[int, str] = {}
    finished = threading.Semaphore(0)
    stacks = []
    stack = _Rows.stack
    monkeypatch.setattr(_Rows, "stack", lambda rows, other: stacks.append(1) or stack(rows, other))

    def done(i: int) -> Callable[[str, str, int], None]:
        def record(text: str, _reason: str, _n: int) -> None:
            got[i] = text
            finished.release()

        return record

    try:
        for i, (name, prompt, n) in enumerate(jobs):
            ids = tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]
            engine.submit(Generation(ids, name, n, lambda _: None, done(i), lambda e: pytest.fail(str(e))))
            time.sleep(0.01)  # arrivals spread out: later ones join running batches
        for _ in jobs:
            assert finished.acquire(timeout=120)
    finally:
        engine.close()
    assert [got[i] for i in range(len(jobs))] == [want[job] for job in jobs]
    assert stacks, "no request joined a running batch"
