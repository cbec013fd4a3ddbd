"""lm-eval model backend "lora-pipeline": HFLM's requests, scored in batches that share each context once.

lm-eval still builds the requests, computes the metrics and aggregates; only the token scoring
differs from the stock `hf` backend. Tokenization, prefix token and maximum length are HFLM's own
(this class subclasses it), so both backends score the same token sequences. The scoring:

- every request's context is the same left-truncated window HFLM feeds the model;
- requests with the same context (the choices of a multiple-choice item) go into one packed row:
  the context once, then each continuation as a branch that sees the context and itself only
  (a 4D attention mask; positions continue from the context's end for every branch);
- rows are sorted by length and batched, and the vocabulary projection runs only at the positions
  whose next token is scored (`logits_to_keep`), not at every context token;
- rolling log-likelihood (perplexity tasks) scores every window of every document in one pass;
- strings are tokenized in batches, each distinct string once (one tokenizer call per request type);
- log-probabilities come from a fused log-softmax over cache-sized chunks of rows;
- paired sides (`PipelineLM.paired`, the forgetting check's base and adapter): requests are tokenized
  and packed once and scored under each side in turn; lm-eval's identical call for the other side is
  answered from those scores without running the model.

Attention implementations that ignore custom 4D masks (flash-attention) get one row per request
with an ordinary padding mask instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix
from peft import PeftModel

from pipeline.config import LM_EVAL_BACKEND

# Attention implementations that apply a custom 4D mask as given (transformers masking_utils returns it as-is).
_MASKED_ATTENTION = {"eager", "sdpa"}

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class _Row:
    """One packed row: a shared context followed by one branch per continuation scored after it."""

    context: list[int]
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    branch: list[int] = field(default_factory=list)  # -1: shared context, else branch number
    # (request index, row indices whose logits predict each continuation token, the continuation tokens)
    targets: list[tuple[int, list[int], list[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = list(self.context)
        self.positions = list(range(len(self.context)))
        self.branch = [-1] * len(self.context)

    def add(self, request: int, continuation: list[int]) -> None:
        """Append `continuation[:-1]` as a branch; its first token is predicted from the context's last position."""
        b = len(self.targets)
        start = len(self.tokens)
        body = continuation[:-1]
        self.tokens += body
        self.positions += range(len(self.context), len(self.context) + len(body))
        self.branch += [b] * len(body)
        self.targets.append((request, [len(self.context) - 1, *range(start, start + len(body))], continuation))


def _rows(requests: list[Request], max_length: int, share: bool) -> list[_Row]:
    """Group requests by the exact context window HFLM would feed the model (one row per request unless `share`)."""
    rows: dict[tuple[int, ...], _Row] = {}
    out: list[_Row] = []
    for i, (_, context, continuation) in enumerate(requests):
        if not context or not continuation or len(continuation) > max_length:
            raise ValueError(
                f"request {i}: needs a non-empty context and a continuation of 1..{max_length} tokens, "
                f"got {len(context)} and {len(continuation)}"
            )
        # HFLM's input window: (context + continuation)[-(max_length + 1):][:-1], truncated from the left.
        window = (context + continuation)[-(max_length + 1) :]
        ctx = tuple(window[: len(window) - len(continuation)])
        row = rows.get(ctx) if share else None
        # A row never outgrows the model's window, so attention per row costs no more than HFLM's longest input.
        if row is None or len(row.tokens) + len(continuation) - 1 > max_length:
            row = _Row(list(ctx))
            out.append(row)
            if share:
                rows[ctx] = row
        row.add(i, continuation)
    return out


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@dataclass(frozen=True)
class _Batch:
    """The model-independent tensors of one forward pass, built once and scored once per side."""

    input_ids: torch.Tensor  # (B, T)
    keep: torch.Tensor  # (B, T) bool: positions whose logits predict a scored token
    position_ids: torch.Tensor | None  # (B, T); None: rows of one request each (no 4D mask needed)
    branch: torch.Tensor | None  # (B, T): -1 shared context, -2 padding, else branch number
    index: torch.Tensor  # (M,): row of the kept logits that predicts each scored token
    target: torch.Tensor  # (M,): the scored tokens
    owners: list[tuple[int, int]]  # (request index, continuation length), in target order


def _batch(rows: list[_Row], pad: int) -> _Batch:
    width = max(len(r.tokens) for r in rows)
    fill = [width - len(r.tokens) for r in rows]
    input_ids = torch.tensor([r.tokens + [pad] * f for r, f in zip(rows, fill, strict=True)])  # (B, T)
    position_ids = branch = None
    if any(len(r.targets) > 1 for r in rows):
        position_ids = torch.tensor([r.positions + [0] * f for r, f in zip(rows, fill, strict=True)])  # (B, T)
        branch = torch.tensor([r.branch + [-2] * f for r, f in zip(rows, fill, strict=True)])  # (B, T)
    owners: list[tuple[int, int]] = []
    at_all: list[int] = []  # row-major (b, t) of every position whose logits predict a scored token
    tokens: list[int] = []
    for b, row in enumerate(rows):
        for request, at, continuation in row.targets:
            owners.append((request, len(continuation)))
            at_all += [b * width + a for a in at]
            tokens += continuation
    flat_at = torch.tensor(at_all)  # (M,)
    keep = torch.zeros(len(rows) * width, dtype=torch.bool)
    keep[flat_at] = True
    flat = keep.cumsum(0) - 1  # row-major (b, t) -> row of the kept logits
    return _Batch(
        input_ids, keep.view(len(rows), width), position_ids, branch, flat[flat_at], torch.tensor(tokens), owners
    )


def _attention_mask(branch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask: causal, and a branch sees the shared context and itself only."""
    width = branch.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool).tril()  # (T, T)
    same = (branch[:, None, :] == -1) | (branch[:, None, :] == branch[:, :, None])  # (B, T, T): key k for query q
    allowed = (causal & same) | torch.eye(width, dtype=torch.bool)  # padding attends to itself only
    mask = torch.zeros((branch.shape[0], 1, width, width), dtype=dtype)  # (B, 1, T, T)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


# Logits normalized per chunk of rows. On CPU a chunk of about 1 MB stays in cache and its buffer is reused;
# normalizing the demo's (6401, 1024) perplexity block at once allocated a fresh 26 MB buffer and added about
# half the forward's time again. On an accelerator, larger chunks mean fewer kernel launches.
_CHUNK_ELEMENTS = {"cpu": 1 << 18}
_CHUNK_ELEMENTS_DEFAULT = 1 << 24
_MIN_CHUNK_ROWS = 64


def _token_logprobs(
    logits: torch.Tensor, index: torch.Tensor, target: torch.Tensor, greedy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each scored token, and whether it is the argmax (all False unless `greedy`).

    logits: (N, V) at the kept positions; index: (M,) row of `logits` predicting each target; target: (M,).
    A fused log-softmax per chunk of rows, as HFLM computes it (about twice as fast as logit - logsumexp).
    """
    n, vocab = logits.shape
    rows = max(_MIN_CHUNK_ROWS, _CHUNK_ELEMENTS.get(logits.device.type, _CHUNK_ELEMENTS_DEFAULT) // vocab)
    order = torch.argsort(index, stable=True)  # (M,): targets grouped by the chunk their row falls in
    bounds = torch.searchsorted(index[order], torch.arange(0, n + rows, rows, device=index.device)).tolist()
    lp = torch.empty(target.shape, dtype=torch.float32, device=logits.device)  # (M,)
    hits = torch.zeros(target.shape, dtype=torch.bool, device=logits.device)  # (M,)
    for c, start in enumerate(range(0, n, rows)):
        sel = order[bounds[c] : bounds[c + 1]]
        if len(sel) == 0:
            continue
        chunk = torch.log_softmax(logits[start : start + rows].float(), dim=-1)  # (rows, V)
        at, tok = index[sel] - start, target[sel]
        lp[sel] = chunk[at, tok]
        if greedy:
            hits[sel] = chunk.argmax(dim=-1)[at] == tok
    return lp, hits


# A context manager factory that puts the model in one scoring state (e.g. `model.disable_adapter`).
Side = Callable[[], AbstractContextManager[object]]


@register_model(LM_EVAL_BACKEND)
class PipelineLM(HFLM):
    """HFLM with batched, context-sharing log-likelihood scoring; see the module docstring.

    Paired use (the forgetting check): inside `paired(sides)`, lm-eval's calls made under `side(name)`
    are answered for that side. The first call for a set of requests tokenizes and packs them once and
    scores them under every side in turn; the other sides' answers are kept for the identical call that
    lm-eval makes when it evaluates those sides, which then costs no model work.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sides: dict[str, Side] = {}
        self._side: str | None = None
        self._kept: dict[tuple[str, tuple[Any, ...]], dict[str, list[Any]]] = {}

    @contextmanager
    def paired(self, sides: Mapping[str, Side]) -> Iterator[None]:
        """Score every request under each of `sides` (in order) the first time it is asked; see the class docstring."""
        if self._sides:
            raise RuntimeError("PipelineLM.paired() does not nest")
        self._sides = dict(sides)
        try:
            yield
        finally:
            self._sides, self._kept = {}, {}

    @contextmanager
    def side(self, name: str) -> Iterator[None]:
        """Answer lm-eval's calls made inside for side `name` of the enclosing `paired()`."""
        if name not in self._sides:
            raise ValueError(f"unknown side {name!r}; inside paired() with sides {sorted(self._sides)}")
        self._side = name
        try:
            yield
        finally:
            self._side = None

    def _answer(self, kind: str, requests: list[Any], prepare: Callable[[], Callable[[], list[Any]]]) -> list[Any]:
        """Scores for the current side. `prepare()` tokenizes and packs the requests and returns the scoring
        function; under `paired()` it runs once and its function once per side (the model in that side's state)."""
        if self._side is None:
            return prepare()()
        key = (kind, tuple(req.args for req in requests))
        kept = self._kept.get(key, {})
        if self._side in kept:
            return kept.pop(self._side)
        score = prepare()
        scores: dict[str, list[Any]] = {}
        for name, enter in self._sides.items():
            with enter():
                scores[name] = score()
        own = scores.pop(self._side)
        self._kept[key] = scores
        return own

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """HFLM's generation, inside the current side's context under `paired()` (generation is not shared)."""
        if self._side is None:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        with self._sides[self._side]():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _encode_many(self, strings: list[str]) -> list[list[int]]:
        """`tok_encode(s)` for every string, in one tokenizer call per set of special-token arguments."""
        bos = self.tokenizer.decode(self.prefix_token_id)
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for i, text in enumerate(strings):
            kw = _add_special_kwargs(None, self.add_bos_token)  # as HFLM.tok_encode(text)
            if has_bos_prefix(text, bos):
                kw["add_special_tokens"] = False
            groups.setdefault(tuple(sorted(kw.items())), []).append(i)
        out: list[list[int]] = [[] for _ in strings]
        for key, idx in groups.items():
            for i, ids in zip(idx, self.tokenizer([strings[i] for i in idx], **dict(key))["input_ids"], strict=True):
                out[i] = list(ids)
        return out

    def _token_requests(self, pairs: list[tuple[str, str]]) -> list[Request]:
        """TemplateLM.loglikelihood's context/continuation split (and empty-context rule), tokenized in batches."""
        contexts, wholes = [], []
        for context, continuation in pairs:
            # Trailing spaces of the context move to the continuation (TemplateLM._encode_pair).
            stripped = context.rstrip()
            contexts.append(stripped)
            wholes.append(context + continuation)
        # The choices of a multiple-choice item share their context: each distinct string is tokenized once.
        distinct = list(
            dict.fromkeys([c for c in contexts if c] + [w for w, c in zip(wholes, contexts, strict=True) if c])
        )
        enc = dict(zip(distinct, self._encode_many(distinct), strict=True))
        out: list[Request] = []
        for (context, continuation), stripped, whole in zip(pairs, contexts, wholes, strict=True):
            if stripped:
                ctx = enc[stripped]
                out.append(((context, continuation), ctx, enc[whole][len(ctx) :]))
            elif context == "":  # TemplateLM's empty-context rule: the prefix token (BOS/EOS) as the context
                cont = self.tok_encode(continuation, add_special_tokens=False)
                if self.prefix_token_id != cont[0]:
                    out.append(((context, continuation), [self.prefix_token_id], cont))
                else:
                    out.append(((context, continuation), cont[:1], cont[1:]))
            else:  # a context of spaces only: TemplateLM's own split
                out.append(((context, continuation), *self._encode_pair(context, continuation)))
        return out

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of log-probs, greedy) per (context, continuation) request, as TemplateLM.loglikelihood."""
        if self.enable_thinking:
            raise ValueError("enable_thinking=True is not compatible with loglikelihood tasks")

        def prepare() -> Callable[[], list[tuple[float, bool]]]:
            token_requests = self._token_requests([req.args for req in requests])
            batches = self._batches(token_requests, share=self._share())
            return lambda: self._run(batches, len(token_requests))

        scores = self._answer("loglikelihood", requests, prepare)
        for req, score in zip(requests, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, score)
        return scores

    def _loglikelihood_tokens(  # type: ignore[override]
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        return self._run(self._batches(requests, share=self._share(), batch_size=override_bs), len(requests))

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """HFLM's rolling windows (context length 1), all documents' windows scored in one batched pass."""

        def prepare() -> Callable[[], list[float]]:
            windows: list[Request] = []
            owner: list[int] = []
            for i, tokens in enumerate(self._encode_many([req.args[0] for req in requests])):
                for ctx, cont in map(
                    lm_utils.make_disjoint_window,
                    lm_utils.get_rolling_token_windows(
                        token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                    ),
                ):
                    windows.append((None, ctx, cont))
                    owner.append(i)
            # Windows share only the one-token prefix: packing them as branches would save nothing.
            batches = self._batches(windows, share=False)

            def score() -> list[float]:
                totals = [0.0] * len(requests)
                for i, (logprob, _) in zip(owner, self._run(batches, len(windows), greedy=False), strict=True):
                    totals[i] += logprob
                return totals

            return score

        totals = self._answer("loglikelihood_rolling", requests, prepare)
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _share(self) -> bool:
        return self.model.config._attn_implementation in _MASKED_ATTENTION

    def _batches(self, requests: list[Request], *, share: bool, batch_size: int | None = None) -> list[_Batch]:
        if self.backend != "causal":
            raise ValueError(f"the {LM_EVAL_BACKEND!r} lm-eval backend scores causal LMs only; use eval.backend: hf")
        rows = sorted(_rows(requests, self.max_length, share), key=lambda r: -len(r.tokens))
        size = batch_size or (self.batch_size if isinstance(self.batch_size, int) else 16)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        return [_batch(rows[i : i + size], int(pad)) for i in range(0, len(rows), size)]

    @torch.inference_mode()
    def _run(self, batches: list[_Batch], n: int, *, greedy: bool = True) -> list[tuple[float, bool]]:
        """(sum of log-probs, greedy) for each of `n` requests; greedy is False throughout when not asked for."""
        results: list[tuple[float, bool]] = [(0.0, False)] * n
        logits_to_keep = _accepts_logits_to_keep(self.model)
        for batch in batches:
            for i, score in self._score_batch(batch, greedy=greedy, logits_to_keep=logits_to_keep):
                results[i] = score
        return results

    def _score_batch(
        self, batch: _Batch, *, greedy: bool, logits_to_keep: bool
    ) -> list[tuple[int, tuple[float, bool]]]:
        """One forward pass; (request index, (sum of log-probs, greedy)) for every branch.

        Rows with branches need the 4D mask. Rows of one request each (rolling windows, no sharing) take
        no mask at all, as in HFLM: under causal attention right padding is invisible to the real tokens,
        and SDPA keeps its fused causal kernel.
        """
        kwargs: dict[str, Any] = {}
        if batch.branch is not None and batch.position_ids is not None:
            kwargs = {
                "attention_mask": _attention_mask(batch.branch, self.model.dtype).to(self.device),
                "position_ids": batch.position_ids.to(self.device),
            }
        input_ids, keep = batch.input_ids.to(self.device), batch.keep.to(self.device)
        if logits_to_keep:
            logits = self.model(input_ids=input_ids, logits_to_keep=keep, **kwargs).logits  # (N, V)
        else:
            logits = self.model(input_ids=input_ids, **kwargs).logits[keep]  # (N, V)
        lp, hits = _token_logprobs(logits, batch.index.to(logits.device), batch.target.to(logits.device), greedy)
        token_lp, hit = lp.tolist(), hits.tolist()
        out = []
        pos = 0
        for request, m in batch.owners:
            out.append((request, (sum(token_lp[pos : pos + m]), all(hit[pos : pos + m]))))
            pos += m
        return out
