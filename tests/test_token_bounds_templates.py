"""Token-length bounds on the chat templates of real base models: Llama 3.1 Instruct and Qwen2.5 Instruct.

The templates are the `chat_template` of `meta-llama/Llama-3.1-8B-Instruct` and `Qwen/Qwen2.5-0.5B-Instruct`
(`tokenizer_config.json`), and Meta-Llama-3-8B-Instruct's one-liner. They run on the tiny byte-level BPE
tokenizer with each model's control tokens added as special tokens, BOS/EOS set as the model sets them, as the
real tokenizers have them: so `<|eot_id|>` / `<|im_end|>` are one token each and the bounds must account for it.
Llama trims every message (`| trim`): rows whose texts have surrounding whitespace must be counted exactly.
Qwen tests `{% if message.content %}` in a branch for tool calls: rows with an empty prompt/response are counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chat_format import load_tokenizer
from pipeline.validate.token_bounds import derive_bounds
from pipeline.validate.token_lengths import TokenLimits, chat_token_counter
from tests.test_validation_token_lengths import TEXT, assert_same_verdicts, frame, reference

LLAMA_31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA_3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
MODELS: dict[str, tuple[str, list[str], str | None, str]] = {
    # name: (template, control tokens, bos, eos), as in each model's tokenizer_config.json
    "llama31": (LLAMA_31, [*LLAMA_SPECIALS, "<|python_tag|>"], "<|begin_of_text|>", "<|eot_id|>"),
    "llama3": (LLAMA_3, LLAMA_SPECIALS, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen25": (QWEN_25, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], None, "<|im_end|>"),
}
PAD = st.sampled_from(["", " ", "\n", "\t", "\u3000", "\x1f", "\u2028", " \n "])
PADDED = st.tuples(PAD, TEXT, PAD).map("".join)


def model_tokenizer(tiny_model_dir: Path, name: str, template: str | None = None) -> Any:
    """The tiny tokenizer dressed as the named model: its control tokens, BOS/EOS and chat template."""
    default, specials, bos, eos = MODELS[name]
    tok = load_tokenizer(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.bos_token, tok.eos_token = bos, eos
    tok.chat_template = template or default
    return tok


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> tuple[str, Any]:
    return request.param, model_tokenizer(tiny_model_dir, request.param)


@st.composite
def padded_rows(draw: Any) -> pd.DataFrame:
    n = draw(st.integers(min_value=1, max_value=8))
    text = st.one_of(TEXT, PADDED)
    maybe = st.one_of(st.none(), st.just(""), text)
    return frame(
        [
            {"prompt": draw(text), "response": draw(text), "system": draw(maybe), "context": draw(maybe)}
            for _ in range(n)
        ]
    )


def test_control_tokens_are_special_tokens(model: tuple[str, Any]) -> None:
    """The setup mirrors the real tokenizers: each control token is one added special token, one id."""
    name, tok = model
    added = {t["content"]: t for t in json.loads(tok.backend_tokenizer.to_str())["added_tokens"]}
    for s in MODELS[name][1]:
        assert added[s]["special"] and len(tok(s, add_special_tokens=False)["input_ids"]) == 1


def test_real_templates_get_bounds(model: tuple[str, Any]) -> None:
    """Llama's `| trim` is guarded per row, Qwen's truth test on content too; neither turns the bounds off."""
    name, tok = model
    bounds, why = derive_bounds(tok)
    assert bounds is not None, why
    if name.startswith("llama"):
        assert (bounds.trimmed, bounds.tests_empty) == ({"system", "user", "assistant"}, False)
    else:
        assert (bounds.trimmed, bounds.tests_empty) == (frozenset(), True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=padded_rows(), pick=st.integers(0, 7), offset=st.integers(-1, 60), min_response=st.integers(0, 4))
def test_verdicts_equal_exact_counting(
    model: tuple[str, Any], records: pd.DataFrame, pick: int, offset: int, min_response: int
) -> None:
    """Counts equal encode_pair's and bound verdicts equal exact ones, with surrounding whitespace and empty texts."""
    _, tok = model
    counter = chat_token_counter(tok)
    total, response = reference(tok, records)
    counted = counter(records)
    assert (counted.total.tolist(), counted.response.tolist()) == (total, response)
    row = records.iloc[pick % len(records)]
    nbytes = len(row["prompt"].encode()) + len(row["response"].encode())
    t = total[pick % len(records)]
    for max_length in (t - 1, t, t + 1, nbytes + offset, nbytes + 80 + offset):
        assert_same_verdicts(tok, records, TokenLimits(max(max_length, 0), min_response), counter)


def test_real_templates_settle_rows_by_bound(model: tuple[str, Any]) -> None:
    """Clean short rows are settled without tokenizing; a row a guard excludes is counted exactly."""
    _, tok = model
    clean = [{"prompt": f"Which pier for sailing {i}?", "response": "Pier two, at 09:30."} for i in range(600)]
    guarded = {"prompt": " Which pier? ", "response": ""}  # whitespace (Llama trims), empty response (Qwen tests it)
    records = frame([*clean, guarded])
    limits = TokenLimits(max_length=200, min_response_tokens=0)
    counted = assert_same_verdicts(tok, records, limits)
    assert counted == 6 + 1  # the 1% sample of the 600 settled rows, and the guarded row
    assert chat_token_counter(tok)(records, limits).total.notna().iloc[-1]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("message['content'] | trim", "message['content'] | upper"),  # transforms every row
        ("message['content'] | trim", "message['content'] | tojson"),  # the probe reaches it
        ("message['content'] | trim", "message['content'][:5000]"),  # slices: content-dependent
        ("{%- if not (message.role", "{%- if '</think>' in message.content %}{%- elif not (message.role"),
    ],
)
def test_content_dependent_templates_count_every_row(tiny_model_dir: Path, old: str, new: str) -> None:
    """Uses of content the bounds cannot follow, on a path rows take, turn the bounds off: every row is counted."""
    assert old in LLAMA_31
    tok = model_tokenizer(tiny_model_dir, "llama31", LLAMA_31.replace(old, new))
    bounds, why = derive_bounds(tok)
    assert bounds is None and "content" in why, why
    records = frame([{"prompt": "Sailing 4?", "response": "Pier two."}] * 3)
    assert assert_same_verdicts(tok, records, TokenLimits(max_length=10_000, min_response_tokens=1)) == 3


def test_trim_next_to_spaces_in_the_template_is_guarded(tiny_model_dir: Path) -> None:
    """`' ' + content | trim + ' '` prints a padded sentinel verbatim-looking; it is still read as trimmed."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] | trim }} <|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
    )
    tok = model_tokenizer(tiny_model_dir, "qwen25", template)
    bounds, why = derive_bounds(tok)
    assert bounds is not None and bounds.trimmed == {"user", "assistant", "system"}, why
    records = frame(
        [{"prompt": " Sailing 4? ", "response": " Pier two. "}, {"prompt": "Sailing 4?", "response": "Pier two."}]
    )
    assert assert_same_verdicts(tok, records, TokenLimits(max_length=10_000, min_response_tokens=1)) == 2
