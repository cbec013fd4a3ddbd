"""The labeling config the pipeline expects: prompt (Text) -> response (TextArea) + category (Choices)."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

# Control and object tag names; the normalizer reads results by these `from_name`s.
PROMPT_NAME = "prompt"
RESPONSE_NAME = "response"
CATEGORY_NAME = "category"


def build_labeling_config(categories: tuple[str, ...] | list[str]) -> str:
    """The Label Studio XML for a prompt -> response + category project."""
    choices = "\n".join(f"      <Choice value={quoteattr(c)}/>" for c in categories)
    return f"""<View>
  <Header value="Prompt"/>
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
