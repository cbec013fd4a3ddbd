"""The labeling config the pipeline expects: prompt (Text) -> response (TextArea) + category (Choices).

Above them sits the feedback panel: a `Header` bound to the task data field `pipeline_feedback`,
which validate/feedback.py fills with why the task was left out of training and clears when the
task passes. A `Header` is display-only (no `name`), so Label Studio neither requires the field in
imported tasks nor checks annotations against it, and an empty field renders nothing (the `Style`
rule hides the empty header). `upgrade_labeling_config` adds the panel to an existing project's
config without touching anything else (`lora-pipeline labelstudio init --upgrade-config`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

# Control and object tag names; the normalizer reads results by these `from_name`s.
PROMPT_NAME = "prompt"
RESPONSE_NAME = "response"
CATEGORY_NAME = "category"
# The task data field the feedback panel shows (also a Data Manager column: task data fields are columns).
FEEDBACK_FIELD = "pipeline_feedback"
FEEDBACK_PANEL_CLASS = "lora-pipeline-feedback"
_PANEL_STYLE = (
    "white-space: pre-wrap; font-family: monospace; font-size: 14px; line-height: 1.5; "
    "background: #fff4e5; border-left: 4px solid #e8590c; padding: 8px 12px; margin: 0 0 12px 0"
)
FEEDBACK_PANEL = f"""  <Style>.{FEEDBACK_PANEL_CLASS} :empty {{ display: none; }}</Style>
  <View className="{FEEDBACK_PANEL_CLASS}">
    <Header value="${FEEDBACK_FIELD}" style="{_PANEL_STYLE}"/>
  </View>
"""
# The root element's start tag, attribute values quoted (they may hold `>`).
_ROOT_START = re.compile(r"""<View(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*>""")


def build_labeling_config(categories: tuple[str, ...] | list[str]) -> str:
    """The Label Studio XML for a prompt -> response + category project."""
    choices = "\n".join(f"      <Choice value={quoteattr(c)}/>" for c in categories)
    return f"""<View>
{FEEDBACK_PANEL}  <Header value="Prompt"/>
  <Text name="{PROMPT_NAME}" value="${PROMPT_NAME}"/>
  <Header value="Write the response"/>
  <TextArea name="{RESPONSE_NAME}" toName="{PROMPT_NAME}" maxSubmissions="1" required="true"
            requiredMessage="Write the response to the prompt" rows="6" editable="true"/>
  <Header value="Category"/>
  <Choices name="{CATEGORY_NAME}" toName="{PROMPT_NAME}" choice="single" required="true">
{choices}
  </Choices>
</View>"""


@dataclass(frozen=True)
class LabelingConfigInfo:
    """What a project's labeling config offers, as far as the pipeline cares."""

    categories: tuple[str, ...]


def check_labeling_config(xml: str, *, project: str = "project") -> LabelingConfigInfo:
    """Parse a project's labeling config and raise `ValueError` naming what is missing."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"{project}: labeling config is not valid XML ({e})") from e
    by_name = {el.get("name"): el for el in root.iter() if el.get("name")}
    text = by_name.get(PROMPT_NAME)
    if text is None or text.tag != "Text" or text.get("value") != f"${PROMPT_NAME}":
        raise ValueError(
            f'{project}: labeling config needs <Text name="{PROMPT_NAME}" value="${PROMPT_NAME}"/>; '
            "recreate it with `lora-pipeline labelstudio init` or edit Settings > Labeling Interface"
        )
    area = by_name.get(RESPONSE_NAME)
    if area is None or area.tag != "TextArea" or area.get("toName") != PROMPT_NAME:
        raise ValueError(
            f'{project}: labeling config needs <TextArea name="{RESPONSE_NAME}" toName="{PROMPT_NAME}"/>; '
            "recreate it with `lora-pipeline labelstudio init` or edit Settings > Labeling Interface"
        )
    choices_el = by_name.get(CATEGORY_NAME)
    if choices_el is None or choices_el.tag != "Choices":
        raise ValueError(
            f'{project}: labeling config needs <Choices name="{CATEGORY_NAME}" toName="{PROMPT_NAME}"> '
            "with one <Choice> per category"
        )
    categories = tuple(c.get("value", "") for c in choices_el.iter("Choice"))
    if not categories or any(not c for c in categories):
        raise ValueError(f"{project}: the {CATEGORY_NAME!r} Choices in the labeling config have no values")
    return LabelingConfigInfo(categories=categories)


def has_feedback_panel(xml: str) -> bool:
    """Whether a labeling config shows the pipeline's feedback panel (a Header bound to `$pipeline_feedback`)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return False
    return any(
        el.tag == "View" and el.get("className") == FEEDBACK_PANEL_CLASS and header.get("value") == f"${FEEDBACK_FIELD}"
        for el in root.iter("View")
        for header in el.iter("Header")
    )


def upgrade_labeling_config(xml: str, *, project: str = "project") -> tuple[str, bool]:
    """The config with the feedback panel added as the first child of its root `<View>`; (xml, changed).

    Only display tags are added and nothing else is rewritten (the text is spliced, not re-serialized),
    so Label Studio accepts the change on a project with annotations and keeps them valid.
    """
    check_labeling_config(xml, project=project)
    if has_feedback_panel(xml):
        return xml, False
    start = _ROOT_START.search(xml)
    if start is None or ET.fromstring(xml).tag != "View":
        raise ValueError(f"{project}: the labeling config's root element is not <View>; add the panel by hand")
    upgraded = xml[: start.end()] + "\n" + FEEDBACK_PANEL + xml[start.end() :].lstrip("\n")
    if ET.fromstring(upgraded).tag != "View" or not has_feedback_panel(upgraded):
        raise AssertionError("splicing the feedback panel broke the labeling config")  # internal invariant
    return upgraded, True
