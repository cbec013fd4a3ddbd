r"""Vectorized text rules behind the row checks: each takes a Series of text and returns True where the row passes.

The regexes are RE2 (pyarrow.compute), called directly: pandas' `.str.contains` silently falls back
to Python's `re` for some patterns and is ~15x slower there. RE2 has no look-arounds or
back-references; `\pL`/`\pN` give Unicode letters and digits (RE2's `\w` is ASCII only). Rows that
need real parsing (markup balance) are first narrowed with a vectorized pre-filter, so clean text
never reaches Python loops.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Two or more spaces/tabs between visible characters, or three or more line breaks in a row.
# Leading indentation (code) is not doubled whitespace; that is the surrounding-whitespace rule's job.
DOUBLED_WHITESPACE = r"[^ \t\n][ \t]{2,}[^ \t\n]|[^ \t\n]\t|\n[ \t]*\n[ \t]*\n"

# `{name}` / `{{ name }}` slots, `[INSERT ...]`-style brackets, `<placeholder>`-style tags, TODO markers.
PLACEHOLDER = (
    r"\{\{?\s*[A-Za-z_][A-Za-z0-9_.]*\s*\}\}?"
    r"|\[\s*(?:INSERT|TODO|TBD|PLACEHOLDER|YOUR|ADD|FILL)[^\]]*\]"
    r"|<\s*(?:placeholder|insert|your|name|tbd|todo|fill)[^<>]*>"
    r"|\b(?:TODO|TBD|FIXME|XXX)\b|(?i:lorem ipsum)"
)

# C0/C1 control characters except tab, newline and carriage return; zero-width and bidi overrides.
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x{9f}\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}-\x{2064}\x{feff}]"

# UTF-8 read as Latin-1/cp1252 ("Ã©", "â€™", "Â "), and U+FFFD from a lossy decode.
MOJIBAKE = (
    r"\x{c3}[\x{80}-\x{bf}\x{2018}-\x{201e}\x{2020}-\x{2022}\x{2026}\x{2030}\x{20ac}\x{152}\x{153}\x{160}\x{161}"
    r"\x{178}\x{17d}\x{17e}]|\x{e2}\x{20ac}|\x{c2}[\x{a0}-\x{bf}]|\x{fffd}"
)

TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:_-]*)\b[^<>]*?(/?)>")
# HTML elements that never take a closing tag.
VOID_TAGS = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})
FENCE = r"(?m)^[ \t]*(?:```|~~~)"

SCRIPTS: dict[str, str] = {
    "latin": "A-Za-z\u00c0-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u04ff\u0500-\u052f",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "arabic": "\u0600-\u06ff\u0750-\u077f",
    "hebrew": "\u0590-\u05ff",
    "han": "\u3400-\u4dbf\u4e00-\u9fff",
    "devanagari": "\u0900-\u097f",
}


_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)


def as_text(s: pd.Series) -> pd.Series:
    """The Series as pandas' Arrow-backed str dtype (missing stays missing), for RE2-speed string ops."""
    if isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow":
        return s
    return s.astype(_TEXT)


def arrow(s: pd.Series) -> pa.ChunkedArray:
    """The text column as an Arrow array (no copy for Arrow-backed Series)."""
    return pa.chunked_array(as_text(s).array._pa_array) if len(s) else pa.chunked_array([], pa.large_string())


def _contains(s: pd.Series, pattern: str) -> pd.Series:
    hit = pc.fill_null(pc.match_substring_regex(arrow(s), pattern), False)
    return pd.Series(hit.to_numpy(zero_copy_only=False).astype(bool), index=s.index)


def not_empty(s: pd.Series) -> pd.Series:
    return as_text(s).str.strip().str.len().fillna(0) > 0


def no_surrounding_whitespace(s: pd.Series) -> pd.Series:
    t = as_text(s)
    return (t == t.str.strip()).fillna(True).astype(bool)


def no_doubled_whitespace(s: pd.Series) -> pd.Series:
    return ~_contains(s, DOUBLED_WHITESPACE)


def no_template_placeholder(s: pd.Series) -> pd.Series:
    return ~_contains(s, PLACEHOLDER)


def no_control_characters(s: pd.Series) -> pd.Series:
    return ~_contains(s, CONTROL)


def no_mojibake(s: pd.Series) -> pd.Series:
    return ~_contains(s, MOJIBAKE)


def markup_problem(text: str, allowed: frozenset[str] | None) -> str | None:
    """Why a text's markup is broken (unbalanced tag, odd fence, tag not allowed), or None when fine.

    With `allowed=None` only balance is checked; otherwise tag names outside `allowed` are reported.
    """
    stack: list[str] = []
    for m in TAG.finditer(text):
        closing, name, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if allowed is not None:
            if name not in allowed:
                return f"tag <{name}> is not among the allowed tags"
            continue
        if self_closing or name in VOID_TAGS:
            continue
        if not closing:
            stack.append(name)
        elif stack and stack[-1] == name:
            stack.pop()
        else:
            return f"closing </{name}> without a matching opening tag"
    if allowed is None:
        if stack:
            return f"<{stack[-1]}> is never closed"
        if len(re.findall(FENCE, text)) % 2:
            return "a ``` code fence is never closed"
    return None


def _markup_pass(s: pd.Series, allowed: frozenset[str] | None) -> pd.Series:
    t = as_text(s)
    # Only text with a tag-like '<x' or a fence can fail; the rest skips the Python parser.
    suspect = _contains(t, r"<[A-Za-z/]|```|~~~")
    ok = pd.Series(True, index=s.index)
    if suspect.any():
        texts = t[suspect]
        ok.loc[suspect] = [not isinstance(x, str) or markup_problem(x, allowed) is None for x in texts]
    return ok


def balanced_markup(s: pd.Series) -> pd.Series:
    return _markup_pass(s, None)


def known_markup_tags(s: pd.Series, allowed: tuple[str, ...]) -> pd.Series:
    return _markup_pass(s, frozenset(a.lower() for a in allowed))


def _count(s: pd.Series, pattern: str) -> np.ndarray:
    counts = pc.fill_null(pc.count_substring_regex(arrow(s), pattern), 0)
    return counts.to_numpy(zero_copy_only=False).astype(np.float64)


def script_share(s: pd.Series, script: str) -> pd.Series:
    """Share of letters written in `script` (1.0 for text without letters)."""
    letters = _count(s, r"\pL")
    in_script = _count(s, f"[{SCRIPTS[script]}]")
    share = np.divide(in_script, letters, out=np.ones_like(letters), where=letters > 0)
    return pd.Series(share, index=s.index)


def normalize_arrow(s: pd.Series) -> pa.ChunkedArray:
    """Case-folded text with punctuation dropped and whitespace collapsed: the key for duplicates and echoes."""
    t = pc.utf8_lower(arrow(s))
    # Punctuation runs (with the spaces around them) become one space; few matches, so RE2 stays fast.
    t = pc.replace_substring_regex(t, r"\s*[^\pL\pN\s]+\s*", " ")
    t = pc.replace_substring_regex(t, r"\s{2,}|[\t\n\r\f\v]", " ")
    return pc.utf8_trim_whitespace(t)


def normalize(s: pd.Series) -> pd.Series:
    """`normalize_arrow` as a Series on the same index."""
    return pd.Series(pd.arrays.ArrowStringArray(normalize_arrow(s)), index=s.index).astype(_TEXT)


def response_not_echo(prompt: pd.Series, response: pd.Series) -> pd.Series:
    """False where the response equals the prompt, or repeats a prompt of 4+ words inside it."""
    p, r = normalize_arrow(prompt), normalize_arrow(response)
    same = pc.fill_null(pc.equal(p, r), False).to_numpy(zero_copy_only=False).astype(bool)
    long_prompt = pc.fill_null(pc.count_substring(p, " "), 0).to_numpy(zero_copy_only=False) >= 3
    fits = pc.fill_null(pc.utf8_length(r), 0).to_numpy(zero_copy_only=False) > pc.fill_null(
        pc.utf8_length(p), 0
    ).to_numpy(zero_copy_only=False)
    cand = np.flatnonzero(long_prompt & fits)
    contains = np.zeros(len(prompt), dtype=bool)
    if len(cand):
        ps = pc.take(p, pa.array(cand)).to_pylist()
        rs = pc.take(r, pa.array(cand)).to_pylist()
        contains[cand] = [a in b for a, b in zip(ps, rs, strict=True)]
    return pd.Series(~(same | contains), index=prompt.index)
