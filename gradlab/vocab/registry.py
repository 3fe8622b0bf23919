"""A registry is a dict of named components plus a small get/resolve pair (after timm's create_act).

A component is referred to in a config either by name (`relu`) or by a mapping with a `name` and
its parameters (`{name: leaky_relu, negative_slope: 0.2}`). `Registry.resolve` turns either form
into a canonical, fully filled mapping, so the resolved config written next to a run says exactly
what ran. Each component's parameters are a small pydantic model: types, ranges and defaults are
declared once and `gradlab components` prints them from the same place.

A registry holds words only (specs.py declares them); what a name builds is a table of functions
on the floor that imports torch, checked against the registry by `implementations`.

This module imports no torch: config validation and `gradlab components` stay light.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

T = TypeVar("T")


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: the models and optimizers compute in float32


class Params(BaseModel):
    """Base for every component's parameters: unknown parameters are errors, not silently ignored,
    and every number must be one float32 can hold (the range it is used in: torch turns a larger
    one into an overflow error mid-run, after the run directory was made)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, defer_build=True)

    @field_validator("*", mode="after")
    @classmethod
    def _in_float32_range(cls, value: Any) -> Any:
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError("beyond float32's range: the value must be at most 3.4e+38 in magnitude (the network computes in float32)")
        return value


class NoParams(Params):
    pass


class SpecError(ValueError):
    """A component spec is wrong. `subpath` is the key inside the spec (e.g. `negative_slope`)."""

    def __init__(self, message: str, subpath: str = ""):
        super().__init__(message)
        self.message = message
        self.subpath = subpath


@dataclass(frozen=True)
class Component:
    """One name a config may use: its one-line description, its parameters, its other spellings."""

    name: str
    doc: str
    params: type[Params] = NoParams
    aliases: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'relu'?)' or '' when nothing is close.

    A word that starts a name is a name cut short, the common way of writing it: `kaiming`,
    `xavier`, `glorot`, `he` are the beginnings of kaiming_normal, xavier_normal, glorot_normal,
    he_normal (a string distance finds none of them); up to two such names are offered."""
    key = _normalize(word)
    if len(key) >= 2:
        starting = [c for c in dict.fromkeys(choices) if c.startswith(key) and c != key]
        # a whole first part (he -> he_normal) before a bare prefix (he -> hello)
        starting.sort(key=lambda c: not c[len(key) :].startswith("_"))
        if starting:
            return " (did you mean " + " or ".join(f"'{c}'" for c in starting[:2]) + "?)"
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def pydantic_message(error: dict[str, Any]) -> str:
    """'must be >= 1' instead of 'Input should be greater than or equal to 1'."""
    ctx = {key: format(value, "g") if isinstance(value, float) else value for key, value in (error.get("ctx") or {}).items()}
    kind = error["type"]
    plain = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "int_type": lambda: "expected an integer",
        "int_from_float": lambda: "expected an integer",
        "float_type": lambda: _float_hint(error.get("input")),
        "bool_type": lambda: "expected true or false",
        "string_type": lambda: "expected a string",
        "string_too_short": lambda: "must not be empty" if ctx.get("min_length") == 1 else f"must have at least {ctx.get('min_length')} characters",
        "finite_number": lambda: "must be a finite number (not nan or inf)",
        "list_type": lambda: "expected a list",
        "dict_type": lambda: "expected a mapping",
        "model_type": lambda: "expected a mapping",
        "missing": lambda: "required",
    }
    if kind in plain:
        return plain[kind]()
    message = str(error.get("msg", ""))
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def with_article(noun: str) -> str:
    """'an activation', 'a normalization'."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _float_hint(value: Any) -> str:
    """'expected a number', with the reason when the input looks like one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "expected a number between -1.8e308 and 1.8e308 (a 64-bit float)"
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+", value.strip()):
        # PyYAML (YAML 1.1) reads 1e-3 as text: its floats need a dot and a signed exponent.
        mantissa, exponent = re.split("[eE]", value.strip())
        mantissa += "" if "." in mantissa else ".0"
        exponent = exponent if exponent[0] in "+-" else f"+{exponent}"
        return f"expected a number (YAML reads {value.strip()} as text; write {mantissa}e{exponent})"
    return "expected a number"


def describe_value(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, never formatting more than it shows: a huge or
    deeply nested value (a YAML alias bomb) costs what is printed, not what it holds."""
    import reprlib

    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother, brief.maxlong = 4, limit, limit, limit
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = brief.maxfrozenset = 8
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        # (beyond Python's 4300-digit limit, repr itself refuses)
        text = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        text = brief.repr(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Registry:
    """Named components of one kind (activation, initializer, ...), with aliases."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Component] = {}
        self._aliases: dict[str, str] = {}

    def add(self, component: Component) -> Component:
        self._items[component.name] = component
        for alias in (component.name, *component.aliases):
            self._aliases[_normalize(alias)] = component.name
        return component

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self):
        return iter(self._items.values())

    def __contains__(self, name: str) -> bool:
        return _normalize(name) in self._aliases

    def get(self, name: str) -> Component:
        key = _normalize(name)
        if key not in self._aliases:
            raise SpecError(
                f"unknown {self.kind} {describe_value(name)}{did_you_mean(name, list(self._aliases))}; "
                f"allowed: {', '.join(self.names())}"
            )
        return self._items[self._aliases[key]]

    def resolve(self, spec: Any) -> dict[str, Any]:
        """`'relu'` or `{name: relu, ...}` -> `{'name': 'relu', **all params with defaults}`."""
        if isinstance(spec, str):
            name, given = spec, {}
        elif isinstance(spec, dict):
            if "name" not in spec:
                raise SpecError(f"{with_article(self.kind)} mapping needs a 'name' key; allowed names: {', '.join(self.names())}")
            given = dict(spec)
            name = given.pop("name")
            if not isinstance(name, str):
                raise SpecError(f"got {describe_value(name)}; expected {with_article(self.kind)} name", "name")
        else:
            raise SpecError(
                f"got {describe_value(spec)}; expected {with_article(self.kind)} name or a mapping with 'name' "
                f"(allowed names: {', '.join(self.names())})"
            )
        component = self.get(name)
        allowed = list(component.params.model_fields)

        def unknown(key: str) -> SpecError:
            return SpecError(
                f"unknown parameter of {self.kind} '{component.name}'{did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed) or 'none'}",
                key,
            )

        for key in given:
            if not isinstance(key, str):  # `3: 1` in YAML; not a keyword argument
                raise unknown(str(key))
        try:
            params = component.params(**given)
        except ValidationError as exc:
            errors = exc.errors()
            error = errors[0]
            # The parameter itself: a union type (`float | 'auto'`) adds its member to the loc.
            key = str(error["loc"][0]) if error["loc"] else ""
            if error["type"] == "extra_forbidden":
                raise unknown(key) from None
            message = pydantic_message(error)
            alternatives = [
                repr(value)
                for other in errors[1:]
                if other["loc"][:1] == error["loc"][:1] and other["type"] == "literal_error"
                for value in re.findall(r"'([^']*)'", str((other.get("ctx") or {}).get("expected", "")))
            ]
            if alternatives:
                message = " or ".join([message, *alternatives])
            raise SpecError(f"got {describe_value(error.get('input'))}; {message}", key) from None
        return {"name": component.name, **params.model_dump()}

    def params_of(self, spec: dict[str, Any]) -> Params:
        """The typed parameters of a resolved spec."""
        component = self.get(spec["name"])
        return component.params(**{k: v for k, v in spec.items() if k != "name"})


def implementations(registry: Registry, table: dict[str, T]) -> dict[str, T]:
    """`table` ({name: function or record}), checked to hold exactly one function per name of `registry`:
    a name added to the vocabulary without its implementation fails at import, not mid-run."""
    if set(table) != set(registry.names()):
        missing, extra = set(registry.names()) - set(table), set(table) - set(registry.names())
        raise RuntimeError(f"{registry.kind} implementations: missing {sorted(missing)}, not in the vocabulary {sorted(extra)}")
    return table


def param_table(params: type[Params]) -> list[tuple[str, str, str]]:
    """(name, type, default) rows for display."""
    rows = []
    for name, info in params.model_fields.items():
        annotation = info.annotation
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        rows.append((name, type_name, describe_value(info.default)))
    return rows
