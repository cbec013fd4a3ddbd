"""Row-level checks on PairRecords; each check is named after its rule so lazy reports read as a checklist.

The rules themselves live in `pipeline/validate/text_checks.py` (vectorized, shared with the benchmark's
plain-pandas peer); this module declares which column each rule guards. Checks that depend on the
project (category choices, allowed tags, declared script, token limits) are added by `pair_schema`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from pipeline.validate import text_checks as tc

# How an annotator fixes a row that failed each check; the report prints these next to the failure.
FIX_HINTS: dict[str, str] = {
    "not_empty": "write the text; a prompt and a response must contain more than whitespace",
    "no_surrounding_whitespace": "remove the spaces or blank lines at the start or end of the text",
    "no_doubled_whitespace": "use single spaces between words, no tabs, and at most one blank line",
    "balanced_markup": "close every <tag> you open and every ``` code fence",
    "known_markup_tags": "remove the tag or ask for it to be added to validation.allowed_tags",
    "no_template_placeholder": "replace the placeholder ({name}, [INSERT ...], <...>, TODO) with real text",
    "no_control_characters": "retype the text; it contains invisible control or zero-width characters",
    "no_mojibake": "re-paste the text from its source; characters like 'Ã©' or '�' are a broken encoding",
    "response_not_echo": "write an answer; the response repeats the prompt",
    "within_max_length": "shorten the prompt or response, or raise data.max_length (rows are never truncated)",
    "response_min_tokens": "write a longer response",
    "category_in_project_choices": "pick one of the project's categories",
    "script_matches_language": "write the text in the project's language",
    "not_nullable": "fill in the missing field",
    "unique": "the task appears twice; remove the copy",
    "prompt_is_text": "the task's data.prompt must be a string; re-import the task",
    "response_is_text": "re-submit the annotation with a text response",
    "result_matches_config": "re-annotate the task with the project's current labeling config",
    "single_category": "choose exactly one category",
    "category_is_text": "re-submit the annotation choosing one category",
    "task_id_invalid": "the exported task has no integer id in 1..2^63-1; re-export from Label Studio",
    "task_id_duplicate": "the same task appears twice in the source; export again or remove the copy",
    "no_duplicate_prompts": "this prompt is already in the dataset; rewrite it or remove the task",
    "no_near_duplicate_prompts": "vary the wording; near-identical prompts teach one narrow pattern",
    "min_dataset_size": "annotate more tasks, or lower validation.min_rows",
    "category_max_share": "annotate more tasks of the other categories, or raise validation.max_category_share",
    "category_min_rows": "annotate more tasks of this category, or lower validation.min_rows_per_category",
    "no_train_eval_leakage": "a prompt is on both sides of the split; report this as a bug",
    "drift_category_shares": "check that this pull is the project you meant; category shares moved a lot",
    "drift_length": "check recent annotations; response lengths changed a lot since the previous snapshot",
    "drift_vocabulary": "check recent annotations; many words were never seen in the previous snapshot",
}

TEXT_RULES = (
    "not_empty",
    "no_surrounding_whitespace",
    "no_doubled_whitespace",
    "balanced_markup",
    "no_template_placeholder",
    "no_control_characters",
    "no_mojibake",
)


class PairRecordSchema(pa.DataFrameModel):
    """One accepted annotation: the data contract of DESIGN.md, plus the formatting rules on its text."""

    task_id: Series[int] = pa.Field(ge=1, unique=True)
    annotation_id: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    project_id: Series[int] = pa.Field(ge=0)
    prompt: Series[str]
    response: Series[str]
    category: Series[str] = pa.Field(nullable=True)
    annotator: Series[str]
    updated_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "us", "tz": "UTC"})
    ground_truth: Series[bool]
    system: Series[str] = pa.Field(nullable=True)
    context: Series[str] = pa.Field(nullable=True)

    @pa.check("prompt", "response", name="not_empty")
    def not_empty(cls, s: Series[str]) -> Series[bool]:
        return tc.not_empty(s)

    @pa.check("prompt", "response", name="no_surrounding_whitespace")
    def no_surrounding_whitespace(cls, s: Series[str]) -> Series[bool]:
        return tc.no_surrounding_whitespace(s)

    @pa.check("prompt", "response", name="no_doubled_whitespace")
    def no_doubled_whitespace(cls, s: Series[str]) -> Series[bool]:
        return tc.no_doubled_whitespace(s)

    @pa.check("prompt", "response", name="balanced_markup")
    def balanced_markup(cls, s: Series[str]) -> Series[bool]:
        return tc.balanced_markup(s)

    @pa.check("prompt", "response", name="no_template_placeholder")
    def no_template_placeholder(cls, s: Series[str]) -> Series[bool]:
        return tc.no_template_placeholder(s)

    @pa.check("prompt", "response", "system", "context", name="no_control_characters")
    def no_control_characters(cls, s: Series[str]) -> Series[bool]:
        return tc.no_control_characters(s)

    @pa.check("prompt", "response", "system", "context", name="no_mojibake")
    def no_mojibake(cls, s: Series[str]) -> Series[bool]:
        return tc.no_mojibake(s)

    @pa.dataframe_check(name="response_not_echo")
    def response_not_echo(cls, df: pd.DataFrame) -> Series[bool]:
        return tc.response_not_echo(df["prompt"], df["response"])

    class Config:
        strict = True
        coerce = True


def pair_schema(
    categories: Sequence[str] | None,
    *,
    allowed_tags: tuple[str, ...] | None = None,
    script: str | None = None,
    min_script_share: float = 0.8,
    max_length: int | None = None,
    min_response_tokens: int | None = None,
) -> pa.DataFrameSchema:
    """The PairRecord schema plus the project's own rules; token limits add the derived token columns.

    `n_tokens` / `n_response_tokens` hold exact counts (as `encode_pair` makes them) for every row that was
    counted, and NA for rows proven within both limits by the tokenizer's bounds, or that cannot be rendered
    (the contract checks report those): NA passes, so only counted rows can fail, with their count as evidence.
    """
    schema = PairRecordSchema.to_schema()
    if categories is not None:
        allowed = list(categories)
        category_check = pa.Check(
            lambda s: s.isin(allowed),
            name="category_in_project_choices",
            ignore_na=False,  # a missing category is not among the choices either
        )
        schema = schema.update_column("category", checks=[category_check])
    if allowed_tags is not None:
        tags = tuple(allowed_tags)
        for col in ("prompt", "response"):
            check = pa.Check(lambda s, t=tags: tc.known_markup_tags(s, t), name="known_markup_tags")
            schema = schema.update_column(col, checks=[*schema.columns[col].checks, check])
    if script is not None:
        for col in ("prompt", "response"):
            check = pa.Check(lambda s: tc.script_share(s, script) >= min_script_share, name="script_matches_language")
            schema = schema.update_column(col, checks=[*schema.columns[col].checks, check])
    if max_length is not None or min_response_tokens is not None:
        schema = schema.add_columns(
            {
                "n_tokens": pa.Column(
                    "Int64",
                    pa.Check(lambda s: s <= (max_length or 2**62), name="within_max_length"),
                    nullable=True,
                ),
                "n_response_tokens": pa.Column(
                    "Int64",
                    pa.Check(lambda s: s >= (min_response_tokens or 0), name="response_min_tokens"),
                    nullable=True,
                ),
            }
        )
    return schema
