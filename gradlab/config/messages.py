"""A pydantic validation error as gradlab says it: one line, `<dotted key>: <what is wrong>`,
naming the key as the user wrote it, with the keys allowed there or the name meant."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from gradlab.vocab.registry import describe_value, did_you_mean, pydantic_message


def allowed_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    """The field names of the section at `loc` under `root` (for 'unknown key' errors)."""
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def format_error(error: dict[str, Any], root: type[BaseModel], where: str = "") -> str:
    """One line for one pydantic error: '<dotted key>: <what is wrong>'. `where` prefixes the key
    (a section validated on its own); `root` is the model the error's loc starts from."""
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    key = ".".join([*([where] if where else []), *(str(part) for part in loc)])
    extra_key = ctx.get("key") or ctx.get("subpath")
    if extra_key:
        key = f"{key}.{extra_key}" if key else extra_key
    key = key or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = allowed_keys(loc[:-1], root)
        return f"{key}: unknown key{did_you_mean(str(loc[-1]), allowed)}; allowed here: {', '.join(allowed)}"
    if kind in ("component", "data", "model", "experiment", "name", "device"):
        return f"{key}: {ctx['message']}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = did_you_mean(str(error["input"]), expected) if isinstance(error["input"], str) else ""
        return f"{key}: got {describe_value(error['input'])}{hint}; allowed: {', '.join(expected)}"
    return f"{key}: got {describe_value(error['input'])}; {pydantic_message(error)}"
