"""Sound bounds on a row's token counts, derived from the tokenizer and its chat template without tokenizing.

* Upper bound on all tokens: every token covers at least one UTF-8 byte of the rendered text (byte-level
  BPE; a SentencePiece-style Metaspace tokenizer adds one prefix marker per segment), each special token
  of the template counts once, and EOS may be appended: tokens <= template tokens + bytes of the row's texts.
* Lower bound on response tokens: a token spans at most `L` characters (the longest vocabulary entry), so
  the `N` characters rendered after the prompt hold at least ceil((N - L + 1) / L) tokens that start there.

The template's constant text is measured once per message shape by rendering it with sentinel contents.
That is exact only for templates that print each message's content unchanged, which the template's syntax
tree is checked for. Tokenizers or templates outside what the bounds are proven for get no bounds (None,
with the reason), and their rows are all counted exactly by `pipeline.validate.token_lengths`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations, pairwise
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from pipeline.chat_format import chat_template, render
from pipeline.validate import text_checks as tc
from pipeline.validate.template_analysis import content_flow, probe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Pre-tokenizers that only split text: none adds a character, and (unless told to remove the match) none drops one.
_SPLITTERS = {"Split", "Digits", "Punctuation", "UnicodeScripts"}


@dataclass(frozen=True)
class _Layout:
    """The template's constant text for one message shape (system present?, context present?)."""

    tokens_ub: int  # upper bound on its tokens: its bytes, each extracted special token counted once, plus
    # one prefix marker per text segment between special tokens where the tokenizer adds one
    full_chars: int  # characters of the rendered conversation outside the contents
    prompt_chars: int  # characters of the rendered prompt (with generation prompt) outside the contents


@dataclass(frozen=True)
class LengthBounds:
    """What the bounds need from one tokenizer + chat template, derived once."""

    family: str
    per_segment: int  # tokens a segment may gain without covering a byte (a prefix marker)
    longest_token: int  # characters one token can span at most
    eos: int  # 1 when encode_pair may append EOS
    layouts: dict[tuple[bool, bool], _Layout]
    added: tuple[str, ...]  # added-token strings; rows containing one are counted when per_segment > 0
    trimmed: frozenset[str] = frozenset()  # roles whose content the template trims: bounds hold where it is stripped
    tests_empty: bool = False  # the template tests contents for truth: bounds hold where none is empty


def _backend_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _family(spec: dict[str, Any], vocab: dict[str, int]) -> tuple[str, int] | str:
    """(family, tokens per segment not covering a byte), or why the byte bound is not known to hold."""
    if spec.get("normalizer") is not None:
        return f"normalizer {spec['normalizer'].get('type')} may lengthen text"
    pre = spec.get("pre_tokenizer") or {"type": "none"}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = {p.get("type") for p in parts}
    model = spec.get("model", {})
    if any(p.get("behavior") == "Removed" for p in parts):
        return "a pre-tokenizer removes text, so a response can have fewer tokens than characters suggest"
    alphabet_complete = "ByteLevel" in kinds and all(ch in vocab for ch in _byte_alphabet())
    if model.get("type") == "BPE" and not (model.get("unk_token") or model.get("byte_fallback") or alphabet_complete):
        return "the BPE model has no unknown token and silently drops characters outside its vocabulary"
    if "ByteLevel" in kinds and kinds <= _SPLITTERS | {"ByteLevel"}:
        extra = int(any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in parts))
        return "byte_level", extra
    if "Metaspace" in kinds and kinds <= _SPLITTERS | {"Metaspace"}:
        meta = next(p for p in parts if p.get("type") == "Metaspace")
        if model.get("byte_fallback") and meta.get("replacement", "\u2581") not in vocab:
            return "the Metaspace replacement is not in the vocabulary and falls back to 3 byte tokens"
        return "metaspace", int(meta.get("prepend_scheme", "always") != "never")
    return f"pre-tokenizer {sorted(k for k in kinds if k)} is not known to keep tokens within bytes"


def _byte_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return ByteLevel.alphabet()


def _sentinel(name: str) -> str:
    # Quotes, backslash, '<', '&' and a newline: any escaping would change it. No whitespace at either end, so
    # `| trim` leaves it alone, as it does every guarded row; `_padded` shows which contents are trimmed.
    return f"\x00{name}<&'\"\\\n\x00"


def _added_tokens(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in spec.get("added_tokens", []) if t.get("content")]


def _may_cross(added: list[dict[str, Any]], before: str, after: str) -> bool:
    """Whether an added token could match across a content slot's edge (text `before` it, `after` it)."""
    for t in added:
        s = t["content"]
        for k in range(1, len(s)):
            head, tail = s[:k], s[k:]
            if after.startswith(tail) or tail.startswith(after):  # content ends with head, template goes on
                return True
            if before.endswith(head) or head.endswith(before):  # template ends with head, content goes on
                return True
    return False


def _extracted(added: list[dict[str, Any]], text: str) -> tuple[int, int]:
    """(count, bytes) of added tokens in text, matched as the tokenizer does: leftmost-longest, tokens marked
    `normalized: false` first, then the others in what is left (no normalizer here, so on the same text)."""
    count = nbytes = 0
    gaps = [text]
    for normalized in (False, True):
        strings = sorted(
            (t["content"] for t in added if bool(t.get("normalized")) == normalized), key=len, reverse=True
        )
        rest: list[str] = []
        for gap in gaps:
            i = start = 0
            while i < len(gap):
                hit = next((s for s in strings if gap.startswith(s, i)), None)
                if hit is None:
                    i += 1
                    continue
                rest.append(gap[start:i])
                count, nbytes, i = count + 1, nbytes + len(hit.encode()), i + len(hit)
                start = i
            rest.append(gap[start:])
        gaps = rest
    return count, nbytes


def _conversation(row: SimpleNamespace, with_response: bool) -> list[dict[str, str]]:
    """The messages `render` builds for a row (checked against its output wherever they are used)."""
    msgs = [{"role": "system", "content": row.system}] if row.system else []
    prompt = f"{row.context}\n\n{row.prompt}" if row.context else row.prompt
    msgs.append({"role": "user", "content": prompt})
    return [*msgs, {"role": "assistant", "content": row.response}] if with_response else msgs


def _trimmed_roles(tokenizer: PreTrainedTokenizerBase, row: SimpleNamespace, texts: tuple[str, str]) -> set[str] | str:
    """Roles whose content the template trims, from a render with whitespace around every content: it must equal
    the sentinel render with each content put in as is or trimmed (the most trimming reading, if several fit)."""
    padded = SimpleNamespace(**{k: f" {v} " if isinstance(v, str) else v for k, v in vars(row).items()})
    try:
        padded_texts = render(tokenizer, padded)
    except (ValueError, jinja2.TemplateError) as e:
        return f"the chat template does not render a sentinel conversation: {e}"
    plain, spaced = _conversation(row, True), _conversation(padded, True)
    roles = [m["role"] for m in plain]
    for n_trimmed in range(len(roles), -1, -1):
        for trimmed in combinations(roles, n_trimmed):
            expected = []
            for text in texts:
                for p, s in zip(plain, spaced, strict=True):
                    text = text.replace(p["content"], s["content"].strip() if s["role"] in trimmed else s["content"])
                expected.append(text)
            if tuple(expected) == padded_texts:
                return set(trimmed)
    return "the chat template does not print each message's content as is or trimmed"


def derive_bounds(tokenizer: PreTrainedTokenizerBase) -> tuple[LengthBounds | None, str]:
    """The bounds for this tokenizer and its chat template, or None and why every row must be counted."""
    spec = _backend_json(tokenizer)
    if spec is None:
        return None, "not a fast (Rust) tokenizer"
    vocab = tokenizer.get_vocab()
    family = _family(spec, vocab)
    if isinstance(family, str):
        return None, family
    name, per_segment = family
    flow = content_flow(chat_template(tokenizer))
    if isinstance(flow, str):
        return None, flow
    added = _added_tokens(spec)
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None, "an added token strips whitespace or matches whole words only, so its span is not fixed"
    sentinels = {k: _sentinel(k) for k in ("system", "context", "prompt", "response")}
    layouts: dict[tuple[bool, bool], _Layout] = {}
    trimmed: set[str] = set()
    for has_system in (False, True):
        for has_context in (False, True):
            row = SimpleNamespace(
                task_id=0,
                system=sentinels["system"] if has_system else None,
                context=sentinels["context"] if has_context else None,
                prompt=sentinels["prompt"],
                response=sentinels["response"],
            )
            try:
                prompt_text, full_text = render(tokenizer, row)
            except (ValueError, jinja2.TemplateError) as e:  # the exact path raises it per row, as training does
                return None, f"the chat template does not render a sentinel conversation: {e}"
            if flow.probe is not None:
                for with_response, text in ((False, prompt_text), (True, full_text)):
                    probed = probe(flow, tokenizer, _conversation(row, with_response), not with_response)
                    if probed is None:
                        return None, f"message content reaches a transforming use (template lines {flow.opaque_lines})"
                    if probed != text:
                        return None, "the chat template renders differently outside apply_chat_template"
            roles = _trimmed_roles(tokenizer, row, (prompt_text, full_text))
            if isinstance(roles, str):
                return None, roles
            trimmed |= roles
            used = [sentinels[k] for k in ("system", "context", "prompt", "response") if getattr(row, k)]
            if any(full_text.count(s) != 1 for s in used) or any(prompt_text.count(s) != 1 for s in used[:-1]):
                return None, "the chat template does not print each message's content exactly once"
            generation = prompt_text.split(sentinels["prompt"])[1]
            between = full_text.split(sentinels["prompt"])[1].split(sentinels["response"])[0]
            if not between.startswith(generation):
                # The prompt stays a prefix of the conversation only for some responses: let encode_pair judge.
                return None, "the generation prompt is not a prefix of the text before the response"
            pieces = full_text
            for s in used:
                pieces = pieces.replace(s, "\x01")
            parts = pieces.split("\x01")
            if any(_may_cross(added, a, b) for a, b in pairwise(parts)):
                return None, "an added token could match across the edge of a message's content"
            const = "".join(parts)
            n_special, special_bytes = _extracted(added, const)
            layouts[(has_system, has_context)] = _Layout(
                tokens_ub=len(const.encode()) - special_bytes + n_special + per_segment * (n_special + 1),
                full_chars=len(const),
                prompt_chars=len(prompt_text) - sum(len(s) for s in used[:-1]),
            )
    longest = max([len(t) for t in vocab] + [len(t["content"]) for t in added])
    eos = int(tokenizer.eos_token_id is not None)
    guards = frozenset(trimmed)
    bounds = LengthBounds(
        name, per_segment, longest, eos, layouts, tuple(t["content"] for t in added), guards, flow.tests_empty
    )
    how = f"content trimmed for {sorted(guards)}" if guards else "content printed as is"
    return bounds, f"{name} tokenizer, {how}" + (", empty contents tested" if flow.tests_empty else "")


def is_text(s: pd.Series | None, n: int) -> np.ndarray:
    """Where the column holds a str (False for a missing column)."""
    if s is None:
        return np.zeros(n, dtype=bool)
    if isinstance(s.dtype, pd.StringDtype):
        return s.notna().to_numpy()
    return np.fromiter((isinstance(x, str) for x in s), dtype=bool, count=n)


def _lengths(s: pd.Series | None, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, characters) per row where mask, 0 elsewhere."""
    n = len(mask)
    if s is None or not mask.any():
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    arr = tc.arrow(s if mask.all() else s.where(mask, None).astype(object))
    nbytes = pc.fill_null(pc.binary_length(arr), 0).to_numpy().astype(np.int64)
    chars = pc.fill_null(pc.utf8_length(arr), 0).to_numpy().astype(np.int64)
    return nbytes, chars


@dataclass(frozen=True)
class RowBounds:
    """Per-row bounds (numpy arrays aligned with the records' positions)."""

    total_ub: np.ndarray
    response_lb: np.ndarray
    full_chars: np.ndarray  # predicted len(full_text), to check against the render of counted rows
    prompt_chars: np.ndarray
    unbounded: np.ndarray  # rows the bounds cannot speak for (an added token inside, with per-segment markers)


def row_bounds(bounds: LengthBounds, records: pd.DataFrame, renderable: np.ndarray) -> RowBounds:
    """Per row: upper bound on all tokens, lower bound on response tokens, and the predicted rendered lengths."""
    n = len(records)
    cols = {c: records.get(c) for c in ("system", "context", "prompt", "response")}
    present = {c: renderable & is_text(s, n) if c in ("system", "context") else renderable for c, s in cols.items()}
    measured = {c: _lengths(cols[c], present[c]) for c in cols}
    nbytes = {c: b for c, (b, _) in measured.items()}
    chars = {c: ch for c, (_, ch) in measured.items()}
    has_system, has_context = present["system"] & (chars["system"] > 0), present["context"] & (chars["context"] > 0)
    const_tokens, const_full, const_prompt = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for (sys_on, ctx_on), layout in bounds.layouts.items():
        sel = (has_system == sys_on) & (has_context == ctx_on)
        const_tokens[sel], const_full[sel], const_prompt[sel] = layout.tokens_ub, layout.full_chars, layout.prompt_chars
    sys_b, ctx_b = np.where(has_system, nbytes["system"], 0), np.where(has_context, nbytes["context"], 0)
    sys_c, ctx_c = np.where(has_system, chars["system"], 0), np.where(has_context, chars["context"], 0)
    total_ub = const_tokens + sys_b + ctx_b + nbytes["prompt"] + nbytes["response"]
    total_ub += bounds.eos
    prompt_chars = const_prompt + sys_c + ctx_c + chars["prompt"]
    full_chars = const_full + sys_c + ctx_c + chars["prompt"] + chars["response"]
    after = full_chars - prompt_chars - (bounds.longest_token - 1)
    response_lb = np.maximum(0, -(-after // bounds.longest_token))
    unbounded = _unguarded(bounds, cols, present, chars, has_context)
    if bounds.per_segment and bounds.added:
        pattern = "|".join(_re2_literal(t) for t in bounds.added)
        for c, s in cols.items():
            if s is not None and present[c].any():
                text = tc.arrow(s.where(present[c], None).astype(object))
                hit = pc.fill_null(pc.match_substring_regex(text, pattern), False)
                unbounded |= hit.to_numpy(zero_copy_only=False).astype(bool)
    return RowBounds(total_ub, response_lb, full_chars, prompt_chars, unbounded)


# Every character `str.strip()` removes, as an RE2 class: `| trim` is the identity exactly where neither end matches.
_SPACE = "[" + "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace()) + "]"


def _edge_space(s: pd.Series | None, mask: np.ndarray, pattern: str) -> np.ndarray:
    """Where the column's text (rows in mask) matches the anchored whitespace pattern."""
    if s is None or not mask.any():
        return np.zeros(len(mask), dtype=bool)
    text = tc.arrow(s.where(mask, None).astype(object))
    return pc.fill_null(pc.match_substring_regex(text, pattern), False).to_numpy(zero_copy_only=False).astype(bool)


def _unguarded(
    bounds: LengthBounds,
    cols: dict[str, pd.Series | None],
    present: dict[str, np.ndarray],
    chars: dict[str, np.ndarray],
    has_context: np.ndarray,
) -> np.ndarray:
    """Rows outside the template's guards: a trimmed message whose content is not stripped, or an empty content
    where the template tests contents for truth. The sentinel layout does not describe them; they are counted."""
    out = np.zeros(len(has_context), dtype=bool)
    lead, trail, both = f"^{_SPACE}", f"{_SPACE}$", f"^{_SPACE}|{_SPACE}$"
    has_system = present["system"] & (chars["system"] > 0)
    if "system" in bounds.trimmed:
        out |= _edge_space(cols["system"], has_system, both)
    if "user" in bounds.trimmed:  # the user message is f"{context}\n\n{prompt}" with a context, else the prompt
        out |= _edge_space(cols["context"], has_context, lead)
        out |= has_context & (chars["prompt"] == 0)  # the message would end with the newlines
        out |= _edge_space(cols["prompt"], present["prompt"] & ~has_context, lead)
        out |= _edge_space(cols["prompt"], present["prompt"], trail)
    if "assistant" in bounds.trimmed:
        out |= _edge_space(cols["response"], present["response"], both)
    if bounds.tests_empty:
        out |= present["prompt"] & ~has_context & (chars["prompt"] == 0)
        out |= present["response"] & (chars["response"] == 0)
    return out


def _re2_literal(s: str) -> str:
    return "".join(f"\\x{{{ord(ch):x}}}" if not ch.isalnum() else ch for ch in s)
