"""The config reference (``docs/config.md``), generated from the schema in :mod:`medkd.config` itself.

Every key of a run config, with its type, default and one line of description, section by section. The page is
rendered by ``python -m medkd.config_reference > docs/config.md``; a test checks that the committed page equals
the rendering and that every key has a description, so the reference cannot fall behind the schema.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from medkd.config import RunConfig

__all__ = ["missing_descriptions", "render_config_reference"]

HEADER = """# Config reference

Every key of a run config (`medkd train CONFIG`), generated from the schema in `src/medkd/config.py` by
`python -m medkd.config_reference > docs/config.md` (a test keeps this page current). Unknown keys are errors;
`--set key.sub=value` overrides any key from the command line.
"""


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) if not isinstance(a, str) else a for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is None:
            return "required"
        return "(section)" if _submodel(field.annotation) else f"`{field.default_factory()!r}`"
    if field.default is None:
        return "null"
    return f"`{field.default!r}`" if not isinstance(field.default, bool) else f"`{str(field.default).lower()}`"


def _walk(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, type[BaseModel] | None]]:
    rows = []
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        rows.append((f"{prefix}{name}", field, sub))
        if sub is not None:
            rows.extend(_walk(sub, f"{prefix}{name}."))
    return rows


def _description(field: Any, sub: type[BaseModel] | None) -> str:
    text = field.description or ((sub.__doc__ or "").strip().split("\n\n")[0] if sub is not None else "")
    return " ".join(text.split()).replace("|", "\\|")


def missing_descriptions() -> list[str]:
    """Keys without a one-line description (a section may use its class docstring)."""
    return [key for key, field, sub in _walk(RunConfig) if not _description(field, sub)]


def render_config_reference() -> str:
    """The markdown page: one table row per key."""
    lines = [HEADER, "| key | type | default | what it does |", "|---|---|---|---|"]
    for key, field, sub in _walk(RunConfig):
        kind = "section" if sub is not None and typing.get_origin(field.annotation) is None else \
            _type_name(field.annotation)
        lines.append(f"| `{key}` | {kind} | {_default(field)} | {_description(field, sub)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_config_reference(), end="")
