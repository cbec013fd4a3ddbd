"""An optional LLM-as-judge rule: a model behind any OpenAI-compatible endpoint compares the base's and the
adapter's answers to each held-out prompt, pairwise, against the reference.

Off by default and never needed offline (`gate.llm_judge`; endpoint and key from `LLM_JUDGE_URL` /
`LLM_JUDGE_API_KEY`, never from the config). It reads the generations the task evaluation already made
(`TaskEvaluation.side_by_side`), so it costs one short chat completion per row and no model time here.

Each row is shown to the judge with the two answers in a seeded random order (A/B), so a judge that prefers
the first position does not favour either side; the answer maps back to adapter win (1), tie (0.5) or loss
(0). The rule judges the paired interval of the adapter's mean preference minus 0.5 (no preference) and, like
the other task-quality rules, fails on evidence of harm: when the whole interval lies below
-`gate.max_judge_preference_drop`. A judge that cannot be reached, or that answers outside A/B/TIE for more
than a tenth of the rows, fails the rule with the reason — a configured judge never passes silently.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from pipeline.config import PipelineConfig, Settings
from pipeline.evaluate.intervals import Interval, mean_delta

JUDGE_SYSTEM = (
    "You compare two answers to a customer's question against a reference answer written by the company's "
    "staff. Judge which answer states the reference's facts more correctly and answers the question better. "
    "Reply with exactly one word: A, B, or TIE."
)
# The share of rows the judge may answer unparseably (or fail on) before the rule fails for want of a verdict.
MAX_INVALID_SHARE = 0.1
_VERDICT = re.compile(r"^\W*(A|B|TIE)\b", re.IGNORECASE)


class JudgeUnavailable(RuntimeError):
    """The judge endpoint could not be reached or refused the request (status, auth)."""


@dataclass(frozen=True)
class JudgeRow:
    task_id: int
    adapter_first: bool
    answer: str  # the judge's raw reply (trimmed), for the per-row table
    score: float  # adapter win 1, tie 0.5, loss 0; nan: no usable verdict


@dataclass(frozen=True)
class JudgeResult:
    """The judge's per-row verdicts and the adapter's preference interval (mean score - 0.5)."""

    model: str
    rows: list[JudgeRow]
    preference: Interval | None  # None when too few rows got a verdict
    error: str = ""  # why there is no verdict (unreachable endpoint, unparseable answers)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def invalid(self) -> int:
        return sum(1 for r in self.rows if math.isnan(r.score))

    def table(self) -> list[dict[str, Any]]:
        """Per-row verdicts for `mlflow.log_table` (evaluation/llm_judge_table.json)."""
        return [
            {
                "task_id": r.task_id,
                "adapter_shown_as": "A" if r.adapter_first else "B",
                "judge": r.answer,
                "score": r.score,
            }
            for r in self.rows
        ]


def _adapter_first(task_id: int, seed: int) -> bool:
    """The row's seeded A/B order: stable across runs, balanced over rows, independent of the answers."""
    return hashlib.sha256(f"{seed}:{task_id}".encode()).digest()[0] % 2 == 0


def judge_prompt(prompt: str, reference: str, first: str, second: str) -> str:
    return (
        f"Question:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
        "Which answer is better? Reply A, B, or TIE."
    )


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'TIE' from the judge's reply; None when it said something else."""
    m = _VERDICT.match(text.strip())
    return m.group(1).upper() if m else None


def _ask(client: httpx.Client, url: str, model: str, content: str) -> str:
    try:
        resp = client.post(
            f"{url.rstrip('/')}/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}],
                "temperature": 0,
                "max_tokens": 8,
            },
        )
    except httpx.HTTPError as e:
        raise JudgeUnavailable(f"LLM judge at {url} unreachable: {type(e).__name__}: {e}") from None
    if resp.status_code in (401, 403, 404):
        # Auth or a wrong model/path: every row would fail the same way.
        raise JudgeUnavailable(f"LLM judge at {url} answered HTTP {resp.status_code}: {resp.text[:200]}")
    if resp.status_code != 200:
        return ""
    try:
        return str(resp.json()["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def judge_side_by_side(
    rows: Sequence[dict[str, Any]],
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout_s: float = 60.0,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> JudgeResult:
    """Ask the judge about every side-by-side row (prompt, reference, base_output, adapter_output, task_id)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out: list[JudgeRow] = []
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        try:
            for r in rows:
                tid = int(r["task_id"])
                first = _adapter_first(tid, seed)
                a, b = (r["adapter_output"], r["base_output"]) if first else (r["base_output"], r["adapter_output"])
                reply = _ask(client, url, model, judge_prompt(str(r["prompt"]), str(r["reference"]), a, b))
                verdict = parse_verdict(reply)
                if verdict is None:
                    score = math.nan
                elif verdict == "TIE":
                    score = 0.5
                else:
                    score = 1.0 if (verdict == "A") == first else 0.0
                out.append(JudgeRow(tid, first, reply.strip()[:200], score))
        except JudgeUnavailable as e:
            return JudgeResult(model, out, None, error=str(e))
    scored = [r.score for r in out if not math.isnan(r.score)]
    counts = {
        "adapter": sum(1 for s in scored if s == 1.0),
        "base": sum(1 for s in scored if s == 0.0),
        "tie": sum(1 for s in scored if s == 0.5),
        "invalid": len(out) - len(scored),
    }
    if not out:
        return JudgeResult(model, out, None, error="no generated rows to judge", counts=counts)
    if counts["invalid"] > MAX_INVALID_SHARE * len(out) or not scored:
        error = (
            f"the judge answered outside A/B/TIE (or failed) on {counts['invalid']} of {len(out)} rows "
            f"(at most {MAX_INVALID_SHARE:.0%} allowed)"
        )
        return JudgeResult(model, out, None, error=error, counts=counts)
    preference = mean_delta([0.5] * len(scored), scored, samples=samples, confidence=confidence, seed=seed)
    return JudgeResult(model, out, preference, counts=counts)


def ask_judge(config: PipelineConfig, rows: Sequence[dict[str, Any]]) -> JudgeResult:
    """`judge_side_by_side` with the gate's judge model and the endpoint and key from the environment."""
    settings = Settings()
    if not settings.llm_judge_url:
        raise ValueError(
            f"gate.llm_judge_model is {config.gate.llm_judge_model!r} but LLM_JUDGE_URL is not set; point it at an "
            "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) or set gate.llm_judge_model: ''"
        )
    key = settings.llm_judge_api_key.get_secret_value() if settings.llm_judge_api_key else None
    ev = config.eval
    return judge_side_by_side(
        rows,
        url=settings.llm_judge_url,
        model=config.gate.llm_judge_model,
        api_key=key,
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=ev.seed,
    )
