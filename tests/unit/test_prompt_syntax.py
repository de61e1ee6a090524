"""A1111's prompt syntax: the attention parser against A1111's own examples, and <lora:...> tags."""

from __future__ import annotations

import pytest

from sdworker.domain.prompt_syntax import (
    extract_lora_tags,
    has_special_syntax,
    merge_loras,
    parse_prompt_attention,
)
from sdworker.domain.request import LoraRef
from sdworker.errors import InvalidRequest

# The examples of AUTOMATIC1111's modules/prompt_parser.py (parse_prompt_attention's doctest), verbatim.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_a1111_examples(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_attention(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[word]", [("word", 1 / 1.1)]),
        ("(word:1.3)", [("word", 1.3)]),
        ("((word))", [("word", 1.1 * 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("a stray ) closer", [("a stray ) closer", 1.0)]),
        ("\\\\ backslash", [("\\ backslash", 1.0)]),
        ("(a:0.5) b (c:-1)", [("a", 0.5), (" b ", 1.0), ("c", -1.0)]),
        ("ratio 16:9", [("ratio 16", 1.0), (":", 1.0), ("9", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_more_cases_by_a1111_rules(text: str, expected: list[tuple[str, float]]) -> None:
    merged: list[tuple[str, float]] = []
    for part, weight in expected:  # equal neighbouring weights merge, as in A1111
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + part, weight)
        else:
            merged.append((part, weight))
    assert parse_prompt_attention(text) == merged


def test_break_splits_chunks() -> None:
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_prompt_attention("BREAKFAST") == [("BREAKFAST", 1.0)]


def test_plain_text_is_not_special() -> None:
    assert not has_special_syntax("a photo of a cat, 4k")
    assert has_special_syntax("a (cat)")
    assert has_special_syntax("a \\(cat")


def test_lora_tags_are_removed_and_returned() -> None:
    text, refs = extract_lora_tags("a cat <lora:styleA:0.7>, <lora:styleB.safetensors> <hypernet:x:1>")
    assert text == "a cat ,  <hypernet:x:1>"  # A1111 removes the tag only, spaces stay
    assert refs == (LoraRef("styleA", 0.7), LoraRef("styleB", 1.0))
    # A1111's optional second number (UNet weight) is accepted; the first weight applies.
    assert extract_lora_tags("<lora:a:0.5:0.2>")[1] == (LoraRef("a", 0.5),)


def test_a_bad_lora_weight_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        extract_lora_tags("x <lora:a:strong>")
    assert info.value.field == "prompt"


def test_the_field_weight_wins_over_the_tag() -> None:
    merged = merge_loras((LoraRef("a.safetensors", 0.3),), (LoraRef("b", 1.0), LoraRef("a", 0.9)))
    assert merged == (LoraRef("a", 0.3), LoraRef("b", 1.0))
