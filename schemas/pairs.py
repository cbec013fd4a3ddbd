"""Row-level checks on PairRecords; each check is named after its rule so lazy reports read as a checklist."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

# How an annotator fixes a row that failed each check; the report prints these next to the failure.
FIX_HINTS: dict[str, str] = {
    "not_empty": "write the text; a prompt and a response must contain more than whitespace",
    "no_surrounding_whitespace": "remove the spaces or blank lines at the start or end of the text",
    "category_in_project_choices": "pick one of the project's categories",
    "not_nullable": "fill in the missing field",
    "prompt_is_text": "the task's data.prompt must be a string; re-import the task",
    "response_is_text": "re-submit the annotation with a text response",
    "result_matches_config": "re-annotate the task with the project's current labeling config",
    "single_category": "choose exactly one category",
    "category_is_text": "re-submit the annotation choosing one category",
    "task_id_invalid": "the exported task has no id; re-export from Label Studio",
    "task_id_duplicate": "the same task appears twice in the source; export again or remove the copy",
}


class PairRecordSchema(pa.DataFrameModel):
    """One accepted annotation: the data contract of DESIGN.md."""

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
        return s.str.strip().str.len() > 0

    @pa.check("prompt", "response", name="no_surrounding_whitespace")
    def no_surrounding_whitespace(cls, s: Series[str]) -> Series[bool]:
        return s == s.str.strip()

    class Config:
        strict = True
        coerce = True


def pair_schema(categories: Sequence[str] | None) -> pa.DataFrameSchema:
    """The PairRecord schema, plus the project's category choices when it declares them."""
    schema = PairRecordSchema.to_schema()
    if categories is None:
        return schema
    allowed = list(categories)
    category_check = pa.Check(
        lambda s: s.isin(allowed),
        name="category_in_project_choices",
        ignore_na=False,  # a missing category is not among the choices either
    )
    return schema.update_column("category", checks=[category_check])
