"""Device check: `lora-pipeline serve --engine vllm` end to end with a real vLLM on a CUDA GPU (not run in CI).

Run (on a machine with a CUDA GPU and `pip install vllm` in the project's environment; no network needed):
      .venv/bin/python bench/vllm_serve_check.py                    # writes bench/results/vllm_serve.json
      .venv/bin/python bench/vllm_serve_check.py --out $OUT/vllm_serve.json --startup-s 600

What it does, all through real processes: builds a small Llama base (hidden 256, 4 heads of 64, which vLLM's
attention kernels take), trains two LoRA adapters on it that answer the same prompts differently, registers
them in a real `mlflow server` as `vcheck@a` (v1) and `vcheck@b` (v2), plus a DoRA adapter as `vcheck@dora`
(v3), and starts `lora-pipeline serve --engine vllm` (which starts vLLM with --enable-lora). Checks, each
recorded as true/false in the JSON:
  * a_and_b_differ: the same prompt to `@a` and `@b` gets different answers, each from its version
    (X-Lora-Model), and `base` answers too;
  * answers_equal_chat: greedy answers equal `lora-pipeline chat`'s (torch, fp32; vLLM runs with
    --dtype float32) for every prompt and model; reported, and a mismatch is listed, since kernels differ;
  * stream_survives_alias_move: a stream on `@live` in flight while `live` moves from v1 to v2 finishes on v1
    with [DONE], the next request gets v2, and v1 is unloaded from vLLM afterwards (GET vLLM /v1/models);
  * hot_swap_s: seconds from the alias move to the first answer by the new version (goal <= 2 s + load);
  * dora_refused: `@dora` gets 409 and never appears in vLLM's /v1/models;
  * concurrent_ok: 48 concurrent requests over `@a`, `@b` and `base` all succeed with one-at-a-time answers;
  * no_orphan: after serve gets SIGTERM, vLLM's port stops answering within 60 s.
Exit status 1 when a structural check (all but answers_equal_chat) fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import get_peft_model  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.demo.sample_data import sample_records  # noqa: E402
from pipeline.demo.tiny_model import build_tiny_model  # noqa: E402
from pipeline.evaluate.forgetting import load_verified_adapter  # noqa: E402
from pipeline.ingest.server import free_port, stop_server  # noqa: E402
from pipeline.serve.adapter_source import resolve_adapter  # noqa: E402
from pipeline.serve.chat import answer, load_chat_model  # noqa: E402
from pipeline.track.registry import register_adapter  # noqa: E402
from pipeline.train.modeling import load_base_model  # noqa: E402
from pipeline.train.recipe import train_adapter  # noqa: E402

NAME = "vcheck"
PROMPTS = ["When does the first ferry leave on Sunday?", "Write a haiku about tea", "hi"]
RESPONSES = {"a": "Alpha says yes to that.", "b": "Beta says no, sorry."}
MAX_TOKENS = 12


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: {url} did not answer in {timeout} s")
        time.sleep(1.0)


def _chat(url: str, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _stream(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=300) as r:
        lines = [line for line in r.iter_lines() if line]
        served = r.headers.get("x-lora-model")
    return {"status": r.status_code, "served": served, "last": lines[-1] if lines else "", "end": time.time()}


def register(url: str, base: Path, work: Path) -> dict[str, int]:
    """Two adapters answering differently (v1 @a, v2 @b) and a DoRA adapter (v3 @dora)."""
    client = MlflowClient(url)
    exp = client.create_experiment(NAME)
    versions: dict[str, int] = {}
    manifest: dict[str, Any] = {}
    for alias, response in RESPONSES.items():
        records = sample_records(16, seed=0)
        records["response"] = response
        cfg = load_config(
            base_model=str(base),
            lora={"r": 8, "alpha": 16.0, "dropout": 0.0},
            train={"learning_rate": 1e-2, "epochs": 6, "batch_size": 8},
        )
        result = train_adapter(cfg, records, records.iloc[:0], work / f"adapter-{alias}")
        model, tok = load_verified_adapter(cfg, result.adapter_dir)
        run_id = client.create_run(exp).info.run_id
        mv = register_adapter(
            url, run_id, model, tok, name=NAME, alias=alias, base_model=str(base), manifest=result.manifest
        )
        versions[alias], manifest = int(mv.version), result.manifest
    torch.manual_seed(0)
    dora = get_peft_model(
        load_base_model(str(base), torch.device("cpu")),
        PeftLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=True),
    )
    run_id = client.create_run(exp).info.run_id
    mv = register_adapter(url, run_id, dora, tok, name=NAME, alias="dora", base_model=str(base), manifest=manifest)
    versions["dora"] = int(mv.version)
    return versions


def expected_answers(base: Path, work: Path) -> dict[tuple[str, str], str]:
    """(model, prompt) -> `lora-pipeline chat`'s answer (torch, CPU, fp32)."""
    out = {}
    for alias in ("a", "b", None):
        source = resolve_adapter(str(work / f"adapter-{alias or 'a'}"))
        chat = load_chat_model(source, base_only=alias is None, device="cpu")
        for prompt in PROMPTS:
            out[(f"{NAME}@{alias}" if alias else "base", prompt)] = answer(chat, prompt, max_new_tokens=MAX_TOKENS)
    return out


def checks(url: str, vllm_url: str, versions: dict[str, int], want: dict[tuple[str, str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    got = {}
    for model in (f"{NAME}@a", f"{NAME}@b", "base"):
        for prompt in PROMPTS:
            r = _chat(url, model, prompt)
            r.raise_for_status()
            got[(model, prompt)] = r.json()["choices"][0]["message"]["content"]
            if model != "base":
                assert r.headers["x-lora-model"] == f"{NAME}/{versions[model[-1]]}", r.headers
    out["a_and_b_differ"] = all(got[(f"{NAME}@a", p)] != got[(f"{NAME}@b", p)] for p in PROMPTS)
    out["answers_equal_chat"] = got == want
    out["answer_mismatches"] = [
        {"model": m, "prompt": p, "vllm": got[(m, p)], "chat": want[(m, p)]}
        for (m, p) in want
        if got[(m, p)] != want[(m, p)]
    ]

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias(NAME, "live", versions["a"])
    try:
        assert _chat(url, f"{NAME}@live", PROMPTS[0]).headers["x-lora-model"] == f"{NAME}/{versions['a']}"
        client.set_registered_model_alias(NAME, "a", versions["b"])  # v1 now only under @live: unloadable
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(_stream, url, f"{NAME}@live", PROMPTS[1], 400)
            time.sleep(0.3)
            moved = time.monotonic()
            client.set_registered_model_alias(NAME, "live", versions["b"])
            while _chat(url, f"{NAME}@live", PROMPTS[0]).headers.get("x-lora-model") != f"{NAME}/{versions['b']}":
                if time.monotonic() - moved > 120:
                    raise RuntimeError("the alias move was not followed in 120 s")
                time.sleep(0.02)
            out["hot_swap_s"] = round(time.monotonic() - moved, 3)
            stream = in_flight.result()
        deadline = time.monotonic() + 30
        while (old := f"{NAME}/{versions['a']}") in _vllm_models(vllm_url) and time.monotonic() < deadline:
            time.sleep(0.2)
        out["stream"] = stream
        out["stream_survives_alias_move"] = (
            stream["status"] == 200
            and stream["served"] == old
            and stream["last"] == "data: [DONE]"
            and old not in _vllm_models(vllm_url)
        )
    finally:
        client.set_registered_model_alias(NAME, "a", versions["a"])
        client.delete_registered_model_alias(NAME, "live")

    deadline = time.monotonic() + 30  # @a back on v1 before the concurrent check compares with v1's answers
    while _chat(url, f"{NAME}@a", PROMPTS[0]).headers.get("x-lora-model") != f"{NAME}/{versions['a']}":
        assert time.monotonic() < deadline, "@a did not move back to v1"
        time.sleep(0.1)

    r = _chat(url, f"{NAME}@dora", PROMPTS[0])
    out["dora_refused"] = r.status_code == 409 and f"{NAME}/{versions['dora']}" not in _vllm_models(vllm_url)
    out["dora_message"] = r.json().get("error", {}).get("message")

    jobs = [(m, PROMPTS[i % len(PROMPTS)]) for i, m in enumerate([f"{NAME}@a", f"{NAME}@b", "base"] * 16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda j: _chat(url, *j), jobs))
    out["concurrent_ok"] = all(r.status_code == 200 for r in answers) and [
        r.json()["choices"][0]["message"]["content"] for r in answers
    ] == [got[j] for j in jobs]
    return out


def _vllm_models(vllm_url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm_url}/v1/models", timeout=10).json()["data"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vllm_serve.json")
    p.add_argument("--startup-s", type=float, default=600.0, help="how long serve may take to start vLLM")
    p.add_argument("--gpu-memory-utilization", default="0.3")
    args = p.parse_args()
    import vllm  # the check is about the real thing: fail here, not later, when it is missing

    assert torch.cuda.is_available(), "no CUDA device"
    result: dict[str, Any] = {"vllm": vllm.__version__, "gpu": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "base", hidden_size=256, num_heads=4, num_layers=2, pretrain_steps=100)
        mlflow_root = work / "mlflow"
        mlflow_root.mkdir()
        port = free_port()
        mlflow = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{mlflow_root / 'mlflow.db'}", "--artifacts-destination", str(mlflow_root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=(mlflow_root / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        os.environ["MLFLOW_TRACKING_URI"] = url
        serve = None
        serve_log = work / "serve.log"
        try:
            _wait(f"{url}/health", mlflow, 120, "mlflow server")
            versions = register(url, base, work)
            want = expected_answers(base, work)
            sport = free_port()
            cmd = [str(Path(sys.executable).parent / "lora-pipeline"), "serve", "--engine", "vllm"]
            cmd += ["--port", str(sport), "--base-model", str(base), "--poll-s", "0.25", "--max-adapters", "4"]
            cmd += ["--work-dir", str(work / "serve-work")]  # downloads and vllm.log
            cmd += ["--vllm-startup-s", str(args.startup_s), "--vllm-arg=--dtype=float32"]
            cmd += ["--vllm-arg=--enforce-eager", f"--vllm-arg=--gpu-memory-utilization={args.gpu_memory_utilization}"]
            started = time.monotonic()
            serve = subprocess.Popen(cmd, stdout=serve_log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
            surl = f"http://127.0.0.1:{sport}"
            _wait(f"{surl}/health", serve, args.startup_s + 60, "lora-pipeline serve --engine vllm")
            result["startup_s"] = round(time.monotonic() - started, 1)
            found = re.search(r"starting vLLM: .* --port (\d+)", serve_log.read_text())
            assert found, serve_log.read_text()[-3000:]
            vllm_url = f"http://127.0.0.1:{found[1]}"
            result |= checks(surl, vllm_url, versions, want)
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=90)
            deadline = time.monotonic() + 60
            result["no_orphan"] = False
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{vllm_url}/health", timeout=2)
                except httpx.HTTPError:
                    result["no_orphan"] = True
                    break
                time.sleep(1)
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
            result["serve_log_tail"] = serve_log.read_text(errors="replace")[-4000:] if serve_log.exists() else ""
            vlog = sorted(work.glob("**/vllm.log"))
            result["vllm_log_tail"] = vlog[0].read_text(errors="replace")[-4000:] if vlog else ""
        finally:
            if serve is not None and serve.poll() is None:
                serve.kill()
            stop_server(mlflow)
    structural = ["a_and_b_differ", "stream_survives_alias_move", "dora_refused", "concurrent_ok", "no_orphan"]
    result["passed"] = "error" not in result and all(result.get(k) is True for k in structural)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
