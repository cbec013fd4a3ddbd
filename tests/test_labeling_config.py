"""Tests for the Label Studio labeling config the pipeline builds and checks (pipeline/ingest/labeling_config.py)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from pipeline.ingest.labeling_config import (
    CATEGORY_NAME,
    PROMPT_NAME,
    RESPONSE_NAME,
    build_labeling_config,
    check_labeling_config,
)

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")


def test_build_check_round_trip() -> None:
    """The config the pipeline builds passes its own check and offers exactly the categories, in order."""
    info = check_labeling_config(build_labeling_config(CATEGORIES))
    assert info.categories == CATEGORIES
    assert check_labeling_config(build_labeling_config(list(CATEGORIES))).categories == CATEGORIES


def test_built_config_names_match_the_normalizer() -> None:
    """Text/TextArea/Choices carry the names the normalizer reads results by."""
    root = ET.fromstring(build_labeling_config(CATEGORIES))
    text = root.find("Text")
    area = root.find("TextArea")
    choices = root.find("Choices")
    assert text is not None and area is not None and choices is not None
    assert text.get("name") == PROMPT_NAME and text.get("value") == f"${PROMPT_NAME}"
    assert area.get("name") == RESPONSE_NAME and area.get("toName") == PROMPT_NAME
    assert choices.get("name") == CATEGORY_NAME and choices.get("toName") == PROMPT_NAME
    assert choices.get("choice") == "single"


@pytest.mark.parametrize(
    "tricky",
    [
        'say "hi"',
        "it's",
        """both "double" and 'single'""",
        "A & B",
        "<b>bold</b>",
        "a > b",
        "ünïcödé ✓",
    ],
)
def test_round_trip_escapes_special_characters(tricky: str) -> None:
    """Category names with quotes, ampersands or angle brackets are XML-escaped and survive the round trip."""
    categories = ("plain", tricky)
    xml = build_labeling_config(categories)
    assert check_labeling_config(xml).categories == categories
    if "&" in tricky:
        assert "&amp;" in xml and tricky not in xml
    if "<" in tricky:
        assert "&lt;" in xml and tricky not in xml


def _config(*, text: str, area: str, choices: str) -> str:
    return f"<View>{text}{area}{choices}</View>"


GOOD_TEXT = '<Text name="prompt" value="$prompt"/>'
GOOD_AREA = '<TextArea name="response" toName="prompt"/>'
GOOD_CHOICES = '<Choices name="category" toName="prompt"><Choice value="a"/><Choice value="b"/></Choices>'


def test_minimal_hand_written_config_passes() -> None:
    """A minimal hand-written config with the three elements is accepted."""
    info = check_labeling_config(_config(text=GOOD_TEXT, area=GOOD_AREA, choices=GOOD_CHOICES))
    assert info.categories == ("a", "b")


@pytest.mark.parametrize(
    "text",
    [
        "",
        '<Text name="question" value="$prompt"/>',
        '<Text name="prompt" value="$question"/>',
        '<HyperText name="prompt" value="$prompt"/>',
    ],
    ids=["missing", "wrong-name", "wrong-value", "wrong-tag"],
)
def test_missing_text_names_text(text: str) -> None:
    """Without <Text name="prompt" value="$prompt"/> the check raises naming the Text element."""
    with pytest.raises(ValueError, match=r'<Text name="prompt" value="\$prompt"/>'):
        check_labeling_config(_config(text=text, area=GOOD_AREA, choices=GOOD_CHOICES), project="ferries")


@pytest.mark.parametrize(
    "area",
    [
        "",
        '<TextArea name="instruction" toName="prompt"/>',
        '<TextArea name="response" toName="other"/>',
        '<Textarea name="response" toName="prompt"/>',
    ],
    ids=["missing", "wrong-name", "wrong-toName", "wrong-tag"],
)
def test_missing_textarea_names_textarea(area: str) -> None:
    """Without <TextArea name="response" toName="prompt"/> the check raises naming the TextArea."""
    with pytest.raises(ValueError, match=r'<TextArea name="response" toName="prompt"/>') as exc:
        check_labeling_config(_config(text=GOOD_TEXT, area=area, choices=GOOD_CHOICES), project="ferries")
    assert str(exc.value).startswith("ferries:")


@pytest.mark.parametrize(
    "choices",
    ["", '<Choices name="quality" toName="prompt"><Choice value="a"/></Choices>', '<Labels name="category"/>'],
    ids=["missing", "wrong-name", "wrong-tag"],
)
def test_missing_choices_names_choices(choices: str) -> None:
    """Without <Choices name="category"> the check raises naming the Choices element."""
    with pytest.raises(ValueError, match=r'<Choices name="category"'):
        check_labeling_config(_config(text=GOOD_TEXT, area=GOOD_AREA, choices=choices))


@pytest.mark.parametrize(
    "choices",
    ['<Choices name="category" toName="prompt"></Choices>', '<Choices name="category"><Choice value=""/></Choices>'],
    ids=["no-choice", "empty-value"],
)
def test_choices_without_values_raise(choices: str) -> None:
    """A Choices element with no (or an empty) Choice value raises saying the choices have no values."""
    with pytest.raises(ValueError, match="no values"):
        check_labeling_config(_config(text=GOOD_TEXT, area=GOOD_AREA, choices=choices))


@pytest.mark.parametrize("xml", ["", "<View>", "<View><Text name='prompt'></View>", "not xml at all"])
def test_invalid_xml_raises_value_error(xml: str) -> None:
    """Unparseable XML raises ValueError (not ParseError) saying so, with the project name."""
    with pytest.raises(ValueError, match="not valid XML") as exc:
        check_labeling_config(xml, project="ferries")
    assert not isinstance(exc.value, ET.ParseError)
    assert "ferries" in str(exc.value)
