"""A1111's prompt syntax, as text: attention weights and ``<lora:name:weight>`` tags. No torch here.

Attention (``parse_prompt_attention``) follows AUTOMATIC1111's ``modules/prompt_parser.py`` rule for
rule, so a prompt written for A1111 means the same here:

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` by 1/1.1, nesting multiplies;
- ``(text:1.3)`` multiplies by 1.3 (a number after the last ``:`` before ``)``);
- ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are the literal characters;
- an unclosed bracket applies to the end of the text; a stray closer is plain text;
- ``BREAK`` (upper case, a word of its own) ends the current 75-token chunk;
- runs with equal weights are merged.

``compel``'s syntax looks alike but its maths differ (it blends whole-prompt embeddings); prompts
are usually written for A1111, so we parse and weight as A1111 does (see ``prompt_encoding``).

LoRA tags (``extract_lora_tags``) are A1111's extra-network syntax ``<lora:name:weight>``: they are
removed from the text before it is encoded and returned as ``LoraRef``; A1111's optional second
number (a separate UNet weight) is accepted and ignored, the first weight applies to the whole LoRA.
"""

from __future__ import annotations

import re

from sdworker.domain.request import LoraRef
from sdworker.errors import InvalidRequest

# Marks a BREAK in parse_prompt_attention's output (A1111 uses the same pair).
BREAK = ("BREAK", -1.0)

_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")
_ROUND, _SQUARE = 1.1, 1 / 1.1


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``text`` -> [(text, weight), ...] with A1111's semantics; ``BREAK`` appears as ``("BREAK", -1.0)``.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list[str | float]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for item in res[start:]:
            item[1] = float(item[1]) * multiplier

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    for start in round_brackets:
        multiply_range(start, _ROUND)
    for start in square_brackets:
        multiply_range(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged: list[list[str | float]] = []
    for item in res:
        if merged and merged[-1][1] == item[1]:
            merged[-1][0] = str(merged[-1][0]) + str(item[0])
        else:
            merged.append(item)
    return [(str(t), float(w)) for t, w in merged]


def has_special_syntax(text: str) -> bool:
    """True when the text has anything that parses differently from plain text (brackets, escapes,
    BREAK): a prompt without any is encoded exactly as diffusers encodes it."""
    return parse_prompt_attention(text) != [(text, 1.0)]


def normalize_lora_name(name: str) -> str:
    """A LoRA's name as the library keys it: without a ``.safetensors`` suffix."""
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def extract_lora_tags(prompt: str, *, field: str = "prompt") -> tuple[str, tuple[LoraRef, ...]]:
    """Remove ``<lora:name[:weight[:unet_weight]]>`` tags from ``prompt``; return the rest and the refs.

    Weight defaults to 1.0, as in A1111. Other extra-network tags (``<hypernet:...>``) are left as
    text. The same name twice: the last tag wins. A weight that is not a number is a 4xx naming
    ``field``.
    """
    found: dict[str, LoraRef] = {}

    def take(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2)
        if kind.lower() not in _LORA_KINDS:
            return match.group(0)
        parts = [p.strip() for p in args.split(":")]
        name = normalize_lora_name(parts[0])
        weight = 1.0
        if len(parts) > 1 and parts[1]:
            try:
                weight = float(parts[1])
            except ValueError:
                raise InvalidRequest(
                    f"{field}: <{kind}:{args}> has weight {parts[1]!r}, not a number", field=field
                ) from None
        if not name:
            raise InvalidRequest(f"{field}: <{kind}:{args}> names no LoRA", field=field)
        found.pop(name, None)
        found[name] = LoraRef(name, weight)
        return ""

    text = _EXTRA_NETWORK.sub(take, prompt)
    return text, tuple(found.values())


def merge_loras(field_refs: tuple[LoraRef, ...], tag_refs: tuple[LoraRef, ...]) -> tuple[LoraRef, ...]:
    """The request's ``loras`` first, then prompt tags naming other LoRAs: when both name the same
    LoRA, the field's weight wins."""
    merged: dict[str, LoraRef] = {}
    for ref in tag_refs:
        merged[normalize_lora_name(ref.name)] = LoraRef(normalize_lora_name(ref.name), ref.weight)
    for ref in field_refs:
        merged[normalize_lora_name(ref.name)] = LoraRef(normalize_lora_name(ref.name), ref.weight)
    field_names = [normalize_lora_name(r.name) for r in field_refs]
    order = list(dict.fromkeys(field_names + [n for n in merged if n not in field_names]))
    return tuple(merged[name] for name in order)
