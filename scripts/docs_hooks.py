"""mkdocs hooks: the reference pages are generated from the code at build time, so they cannot drift.

A page holding ``<!-- generated: openapi -->`` gets the HTTP API reference rendered from the app's own
OpenAPI schema (``create_app(Settings()).openapi()``: every route, parameter, body field with its
bounds, and answer); ``<!-- generated: cli -->`` gets ``sdworker <command> --help`` of every command.
Needs ``sdworker[server]`` (no torch, no model); runs offline.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from typing import Any

OPENAPI_MARKER = "<!-- generated: openapi -->"
CLI_MARKER = "<!-- generated: cli -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, openapi_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    return markdown


# --- the HTTP API ------------------------------------------------------------------------------


def openapi_markdown() -> str:
    from sdworker.api.app import create_app
    from sdworker.settings import Settings

    spec = create_app(Settings()).openapi()
    out: list[str] = [f"OpenAPI {spec['openapi']}, API version {spec['info']['version']}.", ""]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method.upper(), path, op))
    for tag, operations in by_tag.items():
        out += [f"## {tag}", ""]
        for method, path, op in operations:
            out += _operation(method, path, op)
    out += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        out += _schema(name, schema)
    return "\n".join(out)


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    out = [f"### `{method} {path}`", "", op.get("summary", ""), ""]
    if description := op.get("description"):
        out += [description, ""]
    params = op.get("parameters") or []
    if params:
        out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            out.append(
                f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | {'yes' if p.get('required') else ''} "
                f"| {_cell(p.get('description') or p.get('schema', {}).get('description', ''))} |"
            )
        out.append("")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        out += [f"Body ({media}): {_type(content.get('schema', {}))}", ""]
    answers = [f"`{code}` {_cell(answer.get('description', ''))}" for code, answer in op.get("responses", {}).items()]
    if answers:
        out += ["Answers: " + "; ".join(answers) + ".", ""]
    return out


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#{_anchor(name)}}}", ""]
    if description := schema.get("description"):
        out += [_cell(description), ""]
    properties = schema.get("properties")
    if not properties:
        return [*out, f"Type: {_type(schema)}", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
    for field, prop in properties.items():
        default = "required" if field in required else _default(prop)
        description = _cell(prop.get("description", ""))
        out.append(f"| `{field}` | {_type(prop)} | {default} | {_bounds(prop)} | {description} |")
    return [*out, ""]


def _anchor(name: str) -> str:
    return "schema-" + "".join(c if c.isalnum() else "-" for c in name.lower())


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return str(kind)


def _default(prop: dict[str, Any]) -> str:
    return f"`{prop['default']}`" if "default" in prop and prop["default"] is not None else ""


_BOUNDS = {
    "minimum": ">= {}", "maximum": "<= {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}",
    "multipleOf": "multiple of {}", "minLength": "length >= {}", "maxLength": "length <= {}",
    "minItems": "items >= {}", "maxItems": "items <= {}",
}


def _bounds(prop: dict[str, Any]) -> str:
    parts: list[str] = []
    for schema in [prop, *prop.get("anyOf", [])]:
        parts += [template.format(schema[key]) for key, template in _BOUNDS.items() if key in schema]
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# --- the command line --------------------------------------------------------------------------


def cli_markdown() -> str:
    import argparse

    from sdworker.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal; a fixed width for the page
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, sub in commands.choices.items():
        text = io.StringIO()
        with redirect_stdout(text):
            sub.print_help()
        out += [f"## sdworker {name}", "", "```text", text.getvalue().rstrip(), "```", ""]
    return "\n".join(out)
