"""The optional LLM-as-judge rule against an OpenAI-compatible endpoint over real HTTP on loopback.

The endpoint is a stand-in judge (a real HTTP server speaking `/v1/chat/completions`): no model can be
reached from a test. It judges the way it is told to: by closeness to the reference, always "A" (a judge
with position bias), garbage, or HTTP 401.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import GateConfig, PipelineConfig
from pipeline.evaluate.gate import JUDGE_RULE, evaluate_gate
from pipeline.evaluate.intervals import Interval
from pipeline.evaluate.llm_judge import ask_judge, judge_side_by_side, parse_verdict
from pipeline.ingest.server import free_port
from pipeline.track.metric_names import mlflow_key
from tests.test_gate import _report, _task

SECTIONS = re.compile(r"Reference answer:\n(.*?)\n\nAnswer A:\n(.*?)\n\nAnswer B:\n(.*?)\n\nWhich", re.S)


class StandInJudge:
    """A loopback OpenAI-compatible chat endpoint; `mode` picks how it judges, `requests` records what came."""

    def __init__(self) -> None:
        self.mode = "reference"
        self.requests: list[dict[str, object]] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if judge.mode == "unauthorized":
                    self._send(401, {"error": {"message": "invalid api key"}})
                    return
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": judge.reply(body)}}]})

            def _send(self, status: int, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply(self, body: dict[str, object]) -> str:
        if self.mode == "always-a":
            return "A"
        if self.mode == "garbage":
            return "I think both answers have merit."
        content = str(body["messages"][-1]["content"])  # type: ignore[index]
        m = SECTIONS.search(content)
        assert m is not None, content
        reference, a, b = m.groups()
        if a == b:
            return "TIE"
        return "A" if a == reference else "B" if b == reference else "TIE"


@pytest.fixture
def judge() -> Iterator[StandInJudge]:
    j = StandInJudge()
    j.thread.start()
    yield j
    j.server.shutdown()
    j.server.server_close()


def _rows(n: int = 20, adapter_right: bool = True) -> list[dict[str, object]]:
    out = []
    for i in range(n):
        ref = f"The first sailing leaves at {6 + i % 10:02d}:30."
        wrong = "Yes, it runs every day."
        out.append(
            {
                "task_id": 100 + i,
                "prompt": f"What time is the first ferry on route {i}?",
                "reference": ref,
                "base_output": wrong if adapter_right else ref,
                "adapter_output": ref if adapter_right else wrong,
            }
        )
    return out


def _gate(model: str = "judge-model") -> GateConfig:
    return GateConfig(llm_judge_model=model)


def _verdict(gate: GateConfig, judge_result: object) -> object:
    task = _task(Interval(0.5, 0.3, 0.7, 0.95))
    report = _report(Interval(0.0, -0.01, 0.01, 0.95), Interval(0.0, -0.01, 0.01, 0.95))
    return evaluate_gate(gate, task, report, judge=judge_result)  # type: ignore[arg-type]


def test_a_better_adapter_wins_and_passes(judge: StandInJudge) -> None:
    result = judge_side_by_side(_rows(), url=judge.url, model="judge-model", samples=200)
    assert result.counts == {"adapter": 20, "base": 0, "tie": 0, "invalid": 0}
    assert result.preference is not None and result.preference.estimate == pytest.approx(0.5)
    verdict = _verdict(_gate(), result)
    rule = {r.name: r for r in verdict.rules}[JUDGE_RULE]  # type: ignore[attr-defined]
    assert rule.passed and "preferred the adapter on 20" in rule.detail
    # What the endpoint got: the chat completions path, the gate's model, greedy, both answers and the reference.
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "judge-model" and first["temperature"] == 0
    assert first["auth"] is None


def test_a_worse_adapter_fails_the_rule(judge: StandInJudge) -> None:
    result = judge_side_by_side(_rows(adapter_right=False), url=judge.url, model="judge-model", samples=200)
    assert result.counts["base"] == 20
    verdict = _verdict(_gate(), result)
    assert verdict.failed_rules == [JUDGE_RULE]  # type: ignore[attr-defined]
    assert verdict.metrics()[f"gate_{JUDGE_RULE}_passed"] == 0.0  # type: ignore[attr-defined]
    assert mlflow_key(f"gate_{JUDGE_RULE}_value") == f"gate/{JUDGE_RULE}/value"


def test_position_bias_is_balanced_by_the_seeded_order(judge: StandInJudge) -> None:
    """A judge that always answers "A" sees the adapter first on about half the rows: no preference either way."""
    judge.mode = "always-a"
    result = judge_side_by_side(_rows(40), url=judge.url, model="judge-model", samples=200)
    shown_first = sum(r.adapter_first for r in result.rows)
    assert 10 <= shown_first <= 30
    assert result.counts["adapter"] == shown_first and result.counts["base"] == 40 - shown_first
    assert result.preference is not None and result.preference.low < 0 < result.preference.high
    assert _verdict(_gate(), result).passed  # type: ignore[attr-defined]
    # The order is a function of (seed, task id): the same rows get the same order again.
    again = judge_side_by_side(_rows(40), url=judge.url, model="judge-model", samples=200)
    assert [r.adapter_first for r in again.rows] == [r.adapter_first for r in result.rows]


def test_no_verdict_fails_the_rule_with_the_reason(judge: StandInJudge) -> None:
    judge.mode = "garbage"
    garbage = judge_side_by_side(_rows(), url=judge.url, model="judge-model", samples=200)
    assert garbage.preference is None and "outside A/B/TIE" in garbage.error and garbage.counts["invalid"] == 20
    rule = {r.name: r for r in _verdict(_gate(), garbage).rules}[JUDGE_RULE]  # type: ignore[attr-defined]
    assert not rule.passed and "outside A/B/TIE (or failed) on 20 of 20 rows" in rule.detail

    judge.mode = "unauthorized"
    refused = judge_side_by_side(_rows(), url=judge.url, model="judge-model", samples=200)
    assert refused.preference is None and "HTTP 401" in refused.error and len(judge.requests) == 21  # stopped at once

    port = free_port()  # nothing listens there
    down = judge_side_by_side(_rows(), url=f"http://127.0.0.1:{port}/v1", model="m", samples=200, timeout_s=2)
    assert "unreachable" in down.error
    assert not _verdict(_gate(), down).passed  # type: ignore[attr-defined]


def test_off_by_default_and_configured_from_the_environment(
    judge: StandInJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = _verdict(GateConfig(), None)
    assert JUDGE_RULE not in [r.name for r in default.rules]  # type: ignore[attr-defined]
    config = PipelineConfig(gate=_gate("judge-model"))
    monkeypatch.delenv("LLM_JUDGE_URL", raising=False)
    with pytest.raises(ValueError, match="LLM_JUDGE_URL is not set"):
        ask_judge(config, _rows())
    secret = "sk-test-not-a-real-key-7f3a"
    monkeypatch.setenv("LLM_JUDGE_URL", judge.url)
    monkeypatch.setenv("LLM_JUDGE_API_KEY", secret)
    result = ask_judge(config, _rows(4))
    assert result.counts["adapter"] == 4
    assert {r["auth"] for r in judge.requests} == {f"Bearer {secret}"}
    # The key never reaches what is logged: the per-row table or the rule's detail.
    rule = {r.name: r for r in _verdict(config.gate, result).rules}[JUDGE_RULE]  # type: ignore[attr-defined]
    assert secret not in json.dumps(result.table()) and secret not in rule.detail


def test_verdict_parsing() -> None:
    assert parse_verdict("A") == "A" and parse_verdict(" b.") == "B" and parse_verdict("Tie") == "TIE"
    assert parse_verdict("**A**") == "A" and parse_verdict("Answer A") is None and parse_verdict("") is None
