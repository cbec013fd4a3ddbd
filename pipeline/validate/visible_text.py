"""Text with its invisible parts made visible, for the feedback panel annotators read and the reports.

A response with two trailing spaces looks fine on screen; here it reads `It ships today.··`.
One function, `visible`, used by both the labeling-page panel (validate/feedback.py) and the
failure tables (validate/report.py), so that annotators and reviewers see the same markers:

- spaces at the start or end of the text, and each space of a run of two or more: `·`
- tab `→`, newline `↵` (the line break is kept), carriage return `␍`, no-break space `⍽`
- zero-width and other invisible format characters: `⟨ZWSP⟩`, `⟨ZWJ⟩`, `⟨BOM⟩`, ... (`⟨U+XXXX⟩` otherwise)
- C0 control characters as their Unicode control pictures (`␀` ... `␟`, `␡`), C1 ones as `⟨U+0085⟩`

Single spaces between words stay spaces, so ordinary text reads as itself.
"""

from __future__ import annotations

import ast
import re
import unicodedata

SPACE = "·"
_NAMED: dict[str, str] = {
    "\t": "→",
    "\r": "␍",
    "\u00a0": "⍽",
    "\u200b": "⟨ZWSP⟩",
    "\u200c": "⟨ZWNJ⟩",
    "\u200d": "⟨ZWJ⟩",
    "\u2060": "⟨WJ⟩",
    "\ufeff": "⟨BOM⟩",
    "\u00ad": "⟨SHY⟩",
    "\u2028": "⟨LSEP⟩",
    "\u2029": "⟨PSEP⟩",
}
_SPACE_RUNS = re.compile(r"^ +| +$| {2,}", re.MULTILINE)


def _char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # Unicode control pictures: U+0000 -> ␀, U+001B -> ␛
    if code == 0x7F:
        return "␡"
    if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or (ch.isspace() and ch not in " \n"):
        return f"⟨U+{code:04X}⟩"  # C1 controls, other format characters, exotic spaces
    return ch


def visible(text: str) -> str:
    """`text` with surrounding/doubled spaces, tabs, invisible and control characters shown as markers."""
    text = _SPACE_RUNS.sub(lambda m: SPACE * len(m.group()), text)
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵\n")
        else:
            out.append(_char(ch))
    return "".join(out)


def has_invisible(text: str) -> bool:
    """Whether `visible` would change anything in `text`."""
    return visible(text) != text


def unpreview(value: object) -> str | None:
    """The text behind a report preview (`repr(text)`, maybe cut with `…`), or None when it was not a string."""
    if not isinstance(value, str) or len(value) < 2 or value[0] not in "'\"":
        return None
    quote = value[0]
    cut = value.endswith("…") and not value.endswith(quote + "…")
    body = value[:-1] if cut else value
    # A cut preview lacks its closing quote and may end inside an escape (`\x0`, `\u20`): drop up to 9 chars.
    for drop in range(10 if cut else 1):
        candidate = body[: len(body) - drop] + quote if cut else body
        try:
            parsed = ast.literal_eval(candidate)
        except (SyntaxError, ValueError):
            continue
        if isinstance(parsed, str):
            return parsed + ("…" if cut else "")
        return None
    return None


def visible_preview(value: object) -> str:
    """A report's `value` cell as readable text: a string preview unquoted with its invisible parts marked."""
    text = unpreview(value)
    if text is None:
        return "" if value is None else str(value)
    return f"«{visible(text)}»"
