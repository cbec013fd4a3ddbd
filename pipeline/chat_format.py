"""The chat format: the base model's tokenizer and chat template, PairRecords rendered with them, and
response-only labels.

Shared by validate (token lengths as training counts them), train, evaluate and serving, so every stage
turns a pair into the same tokens. Imports no torch: the tokenizer is loaded through transformers'
`AutoTokenizer` on first use only (transformers' config module pulls torch in when it is installed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

# For base models without a chat template. Documented in docs/decisions.md; the generation prompt
# ends in a newline so the response starts on a token boundary for byte-level BPE tokenizers.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized training example; labels are IGNORE_INDEX outside the response."""

    task_id: int
    input_ids: list[int]
    labels: list[int]
    # A replay row of general text (pipeline/train/replay.py), scored by `train.replay.loss` and `.weight`.
    replay: bool = False


def load_tokenizer(base_model: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (EOS) when it has none; code shipped with it runs only with
    `trust_remote_code` (the config's `model.trust_remote_code`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def pair_messages(row: Any) -> list[dict[str, str]]:
    """The prompt side of a pair as chat messages: system (if any), then user (context above the prompt)."""
    msgs = []
    system = getattr(row, "system", None)
    if isinstance(system, str) and system:
        msgs.append({"role": "system", "content": system})
    prompt = row.prompt
    context = getattr(row, "context", None)
    if isinstance(context, str) and context:
        prompt = f"{context}\n\n{prompt}"
    msgs.append({"role": "user", "content": prompt})
    return msgs


def chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat template, or the documented fallback."""
    return tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else FALLBACK_CHAT_TEMPLATE


def render(tokenizer: PreTrainedTokenizerBase, row: Any) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, full text with the response)."""
    template = chat_template(tokenizer)
    msgs = pair_messages(row)
    prompt_text = tokenizer.apply_chat_template(
        msgs, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(
        [*msgs, {"role": "assistant", "content": row.response}], chat_template=template, tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError(
            f"task {row.task_id}: the chat template does not render the prompt as a prefix of the conversation; "
            "response-only labels need a template where it does"
        )
    return prompt_text, full_text


def encode_pair(tokenizer: PreTrainedTokenizerBase, row: Any) -> Example:
    """Tokenize one record; tokens that start inside the prompt text are masked out of the loss."""
    return encode_pairs(tokenizer, [row])[0]


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> Iterator[tuple[list[int], list[Any]]]:
    """(ids, offsets) per text, as `tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)` gives.

    That call runs the Rust tokenizer's `encode_batch` with truncation and padding off; calling it directly
    skips transformers' conversion (~40% of the time) and is used when the Rust tokenizer holds no such setting.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        for e in backend.encode_batch(texts, add_special_tokens=False):
            yield e.ids, e.offsets
        return
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    yield from zip(enc["input_ids"], enc["offset_mapping"], strict=True)


def encode_pairs(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Any]) -> list[Example]:
    """`encode_pair` for many records in one tokenizer call (a fast tokenizer encodes the batch in parallel)."""
    rendered = [render(tokenizer, row) for row in rows]
    if not rendered:
        return []
    encoded = encode_texts(tokenizer, [full for _, full in rendered])
    eos = tokenizer.eos_token_id
    out = []
    for row, (prompt_text, _), (ids, offsets) in zip(rows, rendered, encoded, strict=True):
        ids = list(ids)
        cut = len(prompt_text)
        labels = [tok if start >= cut else IGNORE_INDEX for tok, (start, _) in zip(ids, offsets, strict=True)]
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)  # the model must learn where the response ends
            labels.append(eos)
        out.append(Example(task_id=int(row.task_id), input_ids=ids, labels=labels))
    return out


def build_examples(tokenizer: PreTrainedTokenizerBase, records: pd.DataFrame, max_length: int) -> list[Example]:
    """Tokenize every record; rows that are too long or have no response token stop the run by task id."""
    return check_examples(encode_pairs(tokenizer, list(records.itertuples(index=False))), max_length)


def check_examples(examples: list[Example], max_length: int) -> list[Example]:
    """Stop on rows that are too long or have no response token, naming their task ids."""
    too_long = [e.task_id for e in examples if len(e.input_ids) > max_length]
    if too_long:
        raise ValueError(
            f"{len(too_long)} examples exceed data.max_length={max_length} tokens (task ids {too_long[:20]}); "
            "shorten them in Label Studio or raise data.max_length — rows are never truncated silently"
        )
    no_loss = [e.task_id for e in examples if all(label == IGNORE_INDEX for label in e.labels)]
    if no_loss:
        raise ValueError(
            f"{len(no_loss)} examples have no response token to learn from (task ids {no_loss[:20]}): the chat "
            "template renders nothing after the prompt and the tokenizer has no EOS; fix the template or the rows "
            "rather than train on nothing"
        )
    return examples
