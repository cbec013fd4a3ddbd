"""How message content flows through a chat template: what the token-length bounds may assume about it.

The bounds of `pipeline.validate.token_bounds` measure a template's constant text once per message shape, with sentinel
contents. That is sound when every row of a shape renders as that constant text with its contents put in, so
this module follows each message's content (`m.content`, `m['content']`, and every variable `set` from them)
through the template's Jinja syntax tree and sorts each use:

* printed, alone or joined with `+` / `~`: the content as is;
* `| trim` (no arguments) on the content itself: as is for rows whose content equals `content.strip()`, a
  per-row guard (the other rows are counted exactly);
* a type test (`is string`, `is mapping`, `is defined`, ...): every content is a `str`, so the answer is the
  same for every row;
* `{% if content %}`: the same for every row whose contents are not empty, another per-row guard;
* anything else (other filters, methods, comparisons, `in`, indexing, loops, macros, captured blocks) is
  opaque. The uses above leave the control flow the same for every guarded row of a shape, so an opaque use
  is harmless exactly when the sentinel conversation of each shape never reaches it: `probe` renders the
  template with each opaque use replaced by a raising call to prove that (e.g. Llama 3.1's `tojson` on tool
  messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import jinja2.nodes as jn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Tests whose answer depends only on the value's type (every content is a str).
_TYPE_TESTS = {"string", "mapping", "defined", "undefined", "none", "iterable", "sequence", "number", "integer"}
# Statements an output may sit in for what it prints to land in the rendered text unchanged.
_PLAIN_ANCESTORS = (jn.Template, jn.For, jn.If, jn.Output)
_RAW, _TRIMMED, _JOINED = 0, 1, 2  # what a content-derived value is: the content, content | trim, or text around it
_PROBE_MARK = "lora-pipeline content probe"


@dataclass(frozen=True)
class ContentFlow:
    """The uses of message content in a template that the bounds rely on."""

    trims: bool  # some content is printed through `| trim`
    tests_empty: bool  # some content is tested for truth (`{% if m.content %}`)
    opaque_lines: tuple[int, ...]  # template lines of other uses, which no row may reach
    probe: jinja2.Template | None  # the template with those uses raising (None when there are none)


def _environment(template: str) -> tuple[jinja2.Environment, bool]:
    """transformers' own chat-template environment (True), or a plain one with its settings (False)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template).environment, True
    except (ImportError, AttributeError, jinja2.TemplateError):
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        return env, False


def content_flow(template: str) -> ContentFlow | str:
    """The flow of message content through the template, or why it cannot be followed."""
    env, own = _environment(template)
    try:
        tree = env.parse(template)
    except jinja2.TemplateError:  # the exact path renders (and fails) as training does
        return "the chat template does not parse"
    parents: dict[int, jn.Node] = {}
    stack: list[jn.Node] = [tree]
    while stack:
        node = stack.pop()
        for child in node.iter_child_nodes():
            parents[id(child)] = node
            stack.append(child)
    for const in tree.find_all(jn.Const):
        parent = parents.get(id(const))
        if const.value == "content" and not (isinstance(parent, jn.Getitem) and parent.arg is const):
            return "the chat template reaches message content by a computed key (e.g. m.get('content'))"

    def plain(node: jn.Node) -> bool:
        parent = parents.get(id(node))
        while parent is not None:
            if not isinstance(parent, _PLAIN_ANCESTORS):
                return False
            parent = parents.get(id(parent))
        return True

    names: dict[str, int] = {}
    while True:  # until the variables set from content stop growing
        trims = tests_empty = False
        opaque: list[tuple[jn.Node, jn.Node]] = []
        before = dict(names)
        for source, kind in _sources(tree, names):
            node = source
            while True:
                parent = parents[id(node)]
                if isinstance(parent, jn.Output):
                    if not plain(parent):
                        opaque.append((parent, node))
                    break
                if isinstance(parent, (jn.Add, jn.Concat)):
                    node, kind = parent, _JOINED
                    continue
                if _is_bare(parent, jn.Filter, node, "trim") and kind == _RAW:
                    node, kind, trims = parent, _TRIMMED, True
                    continue
                if isinstance(parent, jn.Test) and _is_bare(parent, jn.Test, node, parent.name):
                    if parent.name not in _TYPE_TESTS:
                        opaque.append((parent, node))
                    break
                if isinstance(parent, jn.If) and parent.test is node and kind == _RAW:
                    tests_empty = True
                    break
                if isinstance(parent, jn.Assign) and parent.node is node and isinstance(parent.target, jn.Name):
                    names[parent.target.name] = max(names.get(parent.target.name, kind), kind)
                    break
                opaque.append((parent, node))
                break
        if names == before:
            break
    if opaque and not own:
        return "the chat template uses message content in ways only transformers' own environment can probe"
    lines = tuple(sorted({node.lineno for _, node in opaque}))
    probe_template = _probe_template(env, tree, opaque) if opaque else None
    return ContentFlow(trims=trims, tests_empty=tests_empty, opaque_lines=lines, probe=probe_template)


def _sources(tree: jn.Template, names: dict[str, int]) -> list[tuple[jn.Node, int]]:
    """Where content enters an expression: `x.content`, `x['content']`, or a variable set from content."""
    out: list[tuple[jn.Node, int]] = []
    for node in tree.find_all((jn.Getattr, jn.Getitem, jn.Name)):
        if (isinstance(node, jn.Getattr) and node.attr == "content") or (
            isinstance(node, jn.Getitem) and isinstance(node.arg, jn.Const) and node.arg.value == "content"
        ):
            out.append((node, _RAW))
        elif isinstance(node, jn.Name) and node.ctx == "load" and node.name in names:
            out.append((node, names[node.name]))
    return out


def _is_bare(parent: jn.Node, kind: type, node: jn.Node, name: str) -> bool:
    """`parent` is a filter/test `name` applied to `node` with no arguments."""
    return (
        isinstance(parent, kind)
        and parent.node is node
        and parent.name == name
        and not parent.args
        and not parent.kwargs
        and parent.dyn_args is None
        and parent.dyn_kwargs is None
    )


def probe(
    flow: ContentFlow, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> str | None:
    """Render as `apply_chat_template` does, with every opaque use of content raising; the text, or None if the
    conversation reached one."""
    assert flow.probe is not None, "no opaque use to probe"
    special: dict[str, Any] = dict(tokenizer.special_tokens_map)
    try:
        return flow.probe.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special
        )
    except jinja2.TemplateError as e:
        if _PROBE_MARK in str(e):
            return None
        raise


def _probe_template(env: jinja2.Environment, tree: jn.Template, uses: list[tuple[jn.Node, jn.Node]]) -> jinja2.Template:
    """The template with each opaque use (parent, node) replaced by `raise_exception(...)`."""
    for parent, node in uses:
        call = jn.Call(
            jn.Name("raise_exception", "load"), [jn.Const(f"{_PROBE_MARK}, line {node.lineno}")], [], None, None
        )
        call.set_lineno(node.lineno).set_environment(env)
        for field in parent.fields:
            value = getattr(parent, field, None)
            if value is node:
                setattr(parent, field, call)
            elif isinstance(value, list):
                setattr(parent, field, [call if v is node else v for v in value])
    return env.from_string(tree)
