"""Generated parts of the documentation (run by mkdocs-gen-files at every `mkdocs build`).

Hand-written pages carry a marker, `<!-- generated: NAME -->`, which this script replaces:

- `reference/configuration.md`, `settings`: every key of `agent.config.AgentSettings` (read from
  `model_fields` and `model_config`, never listed here), its environment variable, type, default and
  meaning. The meaning is the field's description or, failing that, the comment above the key in
  `config/agent.example.toml`; a key with neither fails the build.
- `architecture.md`, `session-states`: a mermaid state diagram of `agent.peer.states.TRANSITIONS`.
- `patches.md`, `patches`: the docstring of `agent.patches`, which describes every patch.

Nothing is written into the repository: mkdocs-gen-files serves the edited pages to the build only.
"""

from __future__ import annotations

import enum
import html
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import annotated_types
import mkdocs_gen_files
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE_TOML = ROOT / "config" / "agent.example.toml"


class DocsError(Exception):
    """A generated part cannot be made: fails the build."""


# --- configuration reference ---------------------------------------------------------------------


def _toml_comments(path: Path) -> dict[str, str]:
    """Key (dotted for tables) -> the comment block right above it in the example file."""
    comments: dict[str, str] = {}
    block: list[str] = []
    table = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        header = re.fullmatch(r"\[([A-Za-z0-9_.]+)\]", line)
        key = re.match(r"#?\s*([a-z_][a-z0-9_]*)\s*=", line)
        if header:
            table, block = header.group(1) + ".", []
        elif key:
            if block:
                comments.setdefault(table + key.group(1), " ".join(block))
            block = []
        elif line.startswith("#") and not line.lstrip("# ").startswith("---"):
            block.append(line.lstrip("#").strip())
        else:
            block = []
    return comments


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                out.append(f"{sign} {value}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append(f"length >= {item.min_length}")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"length <= {item.max_length}")
    return out


def _type_name(annotation: Any) -> tuple[str, list[str]]:
    """A reader's name for a type, and the constraints found inside it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        name, found = _type_name(args[0])
        return name, found + _constraints(list(args[1:]))
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args), []
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        name = " \\| ".join(p[0] for p in parts)
        found = [c for p in parts for c in p[1]]
        return (name + " (optional)" if type(None) in args else name), found
    if origin in (list, tuple, set, frozenset):
        inner = [_type_name(a)[0] for a in args if a is not Ellipsis]
        return f"list of {', '.join(inner) or 'values'}", []
    if origin is dict:
        return "table", []
    if annotation is SecretStr:
        return "string (secret)", []
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(json.dumps(m.value) for m in annotation), []
        if issubclass(annotation, Path):
            return "path (`~` expanded)", []
        names = {str: "string", int: "integer", float: "number", bool: "boolean"}
        return names.get(annotation, annotation.__name__), []
    return str(annotation).replace("typing.", ""), []


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return '"…"'
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return f"`{value!r}`"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return f"computed (`{getattr(field.default_factory, '__name__', 'factory')}()`)"
    if field.default is None:
        return "unset"
    return f"`{_toml_value(field.default)}`"


def _model_class(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _env_names(name: str, field: FieldInfo, prefix: str, parent_env: str | None) -> str:
    alias = field.validation_alias or field.alias
    if parent_env is not None:
        return f"{parent_env}{name.upper()}"
    if isinstance(alias, str):
        return alias.upper()
    if alias is not None and hasattr(alias, "choices"):
        return ", ".join(str(c).upper() for c in alias.choices if isinstance(c, str))
    return f"{prefix}{name}".upper()


def _settings_rows(
    model: type[BaseModel],
    *,
    prefix: str,
    nested_delimiter: str | None,
    comments: Mapping[str, str],
    key_prefix: str = "",
    parent_env: str | None = None,
) -> Iterator[tuple[str, str, str, str, str]]:
    for name, field in model.model_fields.items():
        key = key_prefix + name
        env = _env_names(name, field, prefix, parent_env)
        sub = _model_class(field.annotation)
        if sub is not None:
            child_env = f"{env}{nested_delimiter}" if nested_delimiter else None
            yield from _settings_rows(
                sub,
                prefix=prefix,
                nested_delimiter=nested_delimiter,
                comments=comments,
                key_prefix=key + ".",
                parent_env=child_env,
            )
            continue
        type_name, found = _type_name(field.annotation)
        found += _constraints(list(field.metadata))
        meaning = (field.description or comments.get(key) or "").strip()
        if not meaning:
            raise DocsError(
                f"settings key {key!r} has no description (Field(description=...)) and no "
                f"comment in {EXAMPLE_TOML.relative_to(ROOT)}"
            )
        if type_name.startswith(("list", "table")) or sub is not None:
            env += " (JSON)"
        type_cell = type_name + (f" ({', '.join(dict.fromkeys(found))})" if found else "")
        yield key, env, type_cell, _default(field), meaning


def settings_table() -> str:
    from agent.config import AgentSettings

    config = AgentSettings.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = config.get("env_nested_delimiter") or None
    comments = _toml_comments(EXAMPLE_TOML) if EXAMPLE_TOML.exists() else {}
    lines = [
        "| key | environment variable | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, env, type_cell, default, meaning in _settings_rows(
        AgentSettings, prefix=prefix, nested_delimiter=delimiter, comments=comments
    ):
        meaning = html.escape(meaning, quote=False).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{key}` | `{env}` | {type_cell} | {default} | {meaning} |")
    return "\n".join(lines)


# --- session state machine -------------------------------------------------------------------


def session_states() -> str:
    from agent.peer.states import TRANSITIONS

    transitions: Mapping[Any, frozenset[Any]] = TRANSITIONS
    states = list(dict.fromkeys([*transitions, *(t for ts in transitions.values() for t in ts)]))
    targets = {t for ts in transitions.values() for t in ts}
    order = {s: i for i, s in enumerate(states)}
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{_label(s)}" as {_node(s)}' for s in states]
    lines += [f"    [*] --> {_node(s)}" for s in states if s not in targets]
    for source in states:
        for target in sorted(transitions.get(source, ()), key=order.__getitem__):
            lines.append(f"    {_node(source)} --> {_node(target)}")
    lines += [f"    {_node(s)} --> [*]" for s in states if not transitions.get(s)]
    diagram = "```mermaid\n" + "\n".join(lines) + "\n```"
    try:
        from agent.peer.states import REASONS
    except ImportError:
        return diagram
    rows = ["| from | to | when |", "|---|---|---|"]
    for source in states:
        for target in sorted(transitions.get(source, ()), key=order.__getitem__):
            reason = html.escape(str(REASONS.get((source, target), "")), quote=False)
            rows.append(f"| {_label(source)} | {_label(target)} | {reason} |")
    return diagram + "\n\n" + "\n".join(rows)


def _node(state: Any) -> str:
    return str(getattr(state, "name", state)).upper()


def _label(state: Any) -> str:
    return str(getattr(state, "value", state))


# --- aiortc patches ----------------------------------------------------------------------------


def patches_doc() -> str:
    return _docstring(importlib.import_module("agent.patches"), "agent.patches")


def _docstring(obj: object, name: str) -> str:
    doc = inspect.getdoc(obj)
    if not doc:
        raise DocsError(f"{name} has no docstring")
    return doc


# --- wiring ------------------------------------------------------------------------------------

GENERATED: dict[str, tuple[str, Callable[[], str]]] = {
    "reference/configuration.md": ("settings", settings_table),
    "architecture.md": ("session-states", session_states),
    "patches.md": ("patches", patches_doc),
}


def main() -> None:
    for page, (marker, make) in GENERATED.items():
        source = (DOCS / page).read_text(encoding="utf-8")
        tag = f"<!-- generated: {marker} -->"
        if tag not in source:
            raise DocsError(f"docs/{page} lacks the marker {tag}")
        with mkdocs_gen_files.open(page, "w") as out:
            out.write(source.replace(tag, make()))
        mkdocs_gen_files.set_edit_path(page, page)


main()
