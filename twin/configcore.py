"""The config core: one strict model base, one TOML loader, one error formatter.

Every TOML file a user edits (plant, controller section, tag maps, scenarios, refining
pots, the daemon file) is read by ``load_toml`` and validated by a model built on
``StrictModel``; every problem becomes a ``ConfigIssue`` -- file, dotted key, message --
and all the problems of a load are raised together as one ``ConfigError``. So the same
mistake reads the same in every file::

    plant.toml: cell.acd_cn: unknown key (expected one of: acd_cm, alf3_wt_pct, ...)
    plant.toml: cell.bath_mass_kg: expected a number, got 'lots'
    plant.toml: cell.acd_cm: expected a number in [2, 8], got 20.0
    daemon.toml: daemon.mode: expected 'observe', 'shadow' or 'control', got 'turbo'
    daemon.toml: plc[0:rectifier1].port: expected an integer in [1, 65535], got 70000

Keys are dotted paths; list items are ``[index]``, or ``[index:name]`` when the item has a
``name``. A bound that a field declares is shown whole (``[lo, hi]``, ``(`` / ``)`` for an
exclusive end) with the field's unit when it has one (``json_schema_extra={"unit": ...}``;
``"-"`` marks a dimensionless field and is not shown).

This module is the lowest layer (pydantic and the standard library only), so every
package can use it.
"""

from __future__ import annotations

import math
import re
import reprlib
import tomllib
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

__all__ = [
    "FILE_KEY",
    "SYNTAX_KEY",
    "TOP_LEVEL",
    "ConfigError",
    "ConfigIssue",
    "StrictModel",
    "load_config",
    "load_toml",
    "validate_config",
    "validation_issues",
]

#: key of problems with the file itself (missing, unreadable, a directory)
FILE_KEY = "<file>"
#: key of TOML syntax problems (the message gives line and column)
SYNTAX_KEY = "<syntax>"
#: key of problems that concern a whole document (a rule across several keys)
TOP_LEVEL = "<top level>"

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys refused, values frozen, NaN/inf refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One configuration problem: which file, which key, what was expected and found."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigError(ValueError):
    """A config file (or a file it names) is invalid; ``issues`` lists every problem.

    Built from issues (``ConfigError([ConfigIssue(...), ...])``) or, for one file, from
    ``(key, message)`` pairs (``ConfigError(path, [(key, message), ...])``).
    """

    def __init__(self, issues: Iterable[ConfigIssue] | str | Path, errors: Iterable[tuple[str, str]] = ()) -> None:
        if isinstance(issues, (str, Path)):
            issues = [ConfigIssue(str(issues), key, msg) for key, msg in errors]
        self.issues: list[ConfigIssue] = list(issues) or [ConfigIssue("<config>", TOP_LEVEL, "invalid")]
        if len(self.issues) == 1:
            text = str(self.issues[0])
        else:
            files = ", ".join(dict.fromkeys(i.file for i in self.issues))
            text = "\n  ".join([f"{len(self.issues)} configuration errors in {files}", *map(str, self.issues)])
        super().__init__(text)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigIssue]]]:
        return (type(self), (self.issues,))  # survives pickling (a rig or worker process)

    @property
    def path(self) -> str:
        """The file of the first problem."""
        return self.issues[0].file

    @property
    def errors(self) -> list[tuple[str, str]]:
        """(key, message) of every problem."""
        return [(i.key, i.message) for i in self.issues]

    @property
    def problems(self) -> list[str]:
        """Every problem as one line ``file: key: message``."""
        return [str(i) for i in self.issues]


# --------------------------------------------------------------------------- loading


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into plain data.

    Raises:
        ConfigError: the file is missing, unreadable or a directory, is not UTF-8, is not
            valid TOML (the message gives line and column), or holds a non-finite number
            (``nan``, ``inf``: no setting takes one).
    """
    p = Path(path)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError([ConfigIssue(str(p), key, message)])

    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise fail(FILE_KEY, "file not found") from None
    except IsADirectoryError:
        raise fail(FILE_KEY, "expected a TOML file, got a directory") from None
    except OSError as exc:
        raise fail(FILE_KEY, f"not readable ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise fail(SYNTAX_KEY, "not valid TOML: expected UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        m = re.fullmatch(r"(?s)(.*) \(at (line \d+, column \d+)\)", text)
        raise fail(SYNTAX_KEY, f"not valid TOML at {m[2]}: {m[1]}" if m else f"not valid TOML: {text}") from None
    bad = [ConfigIssue(str(p), key, f"expected a finite number, got {v}") for key, v in _non_finite(data, [])]
    if bad:
        raise ConfigError(bad)
    return data


def _non_finite(node: Any, parts: list[str]) -> Iterator[tuple[str, float]]:
    if isinstance(node, float) and not math.isfinite(node):
        yield _join(parts), node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, [*parts, str(k)])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, [*parts, _item_label(node, i)])


def validate_config(model: type[M], data: Any, source: str | Path, *, prefix: str = "") -> M:
    """``model`` validated from ``data``; every problem raised as one ``ConfigError``.

    Args:
        source: the file named in the issues.
        prefix: dotted key of ``data`` inside its file (``"control"`` for a plant's
            ``[control]`` table); empty for a whole file.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_issues(exc, source, model, data, prefix=prefix)) from None


def load_config(model: type[M], path: str | Path) -> M:
    """Read the TOML file ``path`` and validate it as ``model`` (``ConfigError`` on any problem)."""
    return validate_config(model, load_toml(path), path)


# --------------------------------------------------------------------------- the formatter


def validation_issues(
    exc: ValidationError,
    source: str | Path,
    model: type[BaseModel] | None = None,
    data: Any = None,
    *,
    prefix: str = "",
) -> list[ConfigIssue]:
    """Every pydantic error of ``exc`` as a ``ConfigIssue`` (file, dotted key, message).

    ``model`` (the validated class) lets unknown keys list the valid ones and bound errors
    show the whole allowed range and unit; ``data`` (the validated input) names list items
    by their ``name``. Errors of the members of a union on one key are merged into one
    issue (``expected a number or an array, got 'x'``).
    """
    found: list[tuple[str, _Problem]] = []
    for err in exc.errors():
        where = _locate(model, tuple(err["loc"]), data)
        key = where.key
        if prefix:
            key = f"{prefix}{'' if key.startswith('[') else '.'}{key}" if key else prefix
        key = key or TOP_LEVEL
        prob = _problem(dict(err), where)
        prob.in_union = where.in_union
        if where.in_union and found and found[-1][0] == key and found[-1][1].in_union:
            found[-1] = (key, found[-1][1].merge(prob))  # pydantic reports union members one after another
        else:
            found.append((key, prob))
    return [ConfigIssue(str(source), key, prob.text()) for key, prob in found]


@dataclass(slots=True)
class _Where:
    key: str
    field: FieldInfo | None  # the field the error is about (None: a list item, a free-form value)
    annotation: Any  # its type
    parent: Any  # the type holding the last key (for "expected one of" on unknown keys)
    in_union: bool


_NO_GOT = object()


@dataclass(slots=True)
class _Problem:
    expected: str | None  # "a number in [2, 8] cm" (None: free text)
    got: Any
    free: str = ""  # a rule's own message (validators)
    in_union: bool = False

    def merge(self, other: _Problem) -> _Problem:
        if self.expected and other.expected and self.expected != other.expected:
            return _Problem(f"{self.expected} or {other.expected}", self.got, in_union=True)
        return self

    def text(self) -> str:
        if self.expected is None:
            return self.free
        got = "" if self.got is _NO_GOT else f", got {self.got}"
        return f"expected {self.expected}{got}"


def _locate(model: type[BaseModel] | None, loc: tuple[Any, ...], data: Any) -> _Where:
    """Resolve a pydantic ``loc`` against the model: the dotted key and what stands there."""
    parts: list[str] = []
    ann: Any = model
    field: FieldInfo | None = None
    parent: Any = None
    node = data
    in_union = False
    for part in loc:
        parent = ann
        cur = _strip_optional(ann)
        if isinstance(part, int):
            parts.append(_item_label(node, part))
            node = _child(node, part)
            ann, field = _item_type(cur, part), None
            continue
        if _is_union(cur):  # pydantic names the union member it tried: not part of the key
            in_union = True
            ann = next((m for m in get_args(cur) if _type_tag(m) == part), cur)
            continue
        parts.append(str(part))
        node = _child(node, part)
        fields = _model_fields(cur)
        if fields is not None and part in fields:
            field = fields[part]
            ann = field.annotation
        elif get_origin(cur) is dict:
            args = get_args(cur)
            ann, field = (args[1] if len(args) == 2 else Any), None
        else:
            ann, field = None, None
    return _Where(_join(parts), field, ann, parent, in_union)


def _problem(err: dict[str, Any], where: _Where) -> _Problem:
    typ: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    given = err.get("input", _NO_GOT)
    got = _show(given, where.key)
    if typ == "extra_forbidden":
        fields = _model_fields(_strip_optional(where.parent))
        allowed = f" (expected one of: {', '.join(sorted(fields))})" if fields else ""
        return _Problem(None, _NO_GOT, free=f"unknown key{allowed}")
    if typ == "missing":
        return _Problem(None, _NO_GOT, free="required key missing")
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _Problem(_range_text(where, ctx), got)
    if typ in ("too_short", "too_long", "string_too_short", "string_too_long"):
        n = ctx.get("min_length" if typ.endswith("short") else "max_length")
        what = "character" if typ.startswith("string") else "item"
        return _Problem(f"{'at least' if typ.endswith('short') else 'at most'} {n} {what}{'s' if n != 1 else ''}", got)
    if typ == "string_pattern_mismatch":
        return _Problem(f"text matching {ctx.get('pattern')!r}", got)
    if typ in _TYPE_WORDS:
        return _Problem(_TYPE_WORDS[typ], got)
    msg: str = err["msg"]
    if typ in ("value_error", "assertion_error"):
        text = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        if text.startswith("expected ") and ", got " not in text and got is not _NO_GOT:
            return _Problem(text.removeprefix("expected "), got)
        return _Problem(None, _NO_GOT, free=text)
    if msg.startswith("Input should be "):  # choices (literals, enums) and other types
        return _Problem(msg.removeprefix("Input should be "), got)
    return _Problem(None, _NO_GOT, free=msg + ("" if got is _NO_GOT else f", got {got}"))


#: pydantic type errors in the words of a TOML file
_TYPE_WORDS = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "path_type": "a path (a string)",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "list_type": "an array",
    "tuple_type": "an array",
    "none_required": "nothing (null)",
}


def _range_text(where: _Where, ctx: dict[str, Any]) -> str:
    """'a number in [lo, hi] unit' from the field's declared bounds (else the one pydantic names)."""
    bounds: dict[str, Any] = {}
    if where.field is not None:
        for meta in where.field.metadata:
            for name in ("gt", "ge", "lt", "le"):
                v = getattr(meta, name, None)
                if v is not None:
                    bounds[name] = v
    if not bounds:
        bounds = {k: v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")}
    kind = "an integer" if _strip_optional(where.annotation) is int else "a number"
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        text = f"{kind} in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    elif lo:
        text = f"{kind} {'≥' if lo[0] == '[' else '>'} {_num(lo[1])}"
    elif hi:
        text = f"{kind} {'≤' if hi[0] == ']' else '<'} {_num(hi[1])}"
    else:
        text = kind
    extra = where.field.json_schema_extra if where.field is not None else None
    unit = extra.get("unit") if isinstance(extra, dict) else None
    return f"{text} {unit}" if isinstance(unit, str) and unit not in ("", "-") else text  # "-": dimensionless


# --------------------------------------------------------------------------- helpers

_SECRET = re.compile(r"password|secret|token", re.IGNORECASE)
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80


def _show(value: Any, key: str) -> Any:
    """How a received value is shown (``_NO_GOT`` for tables: the key already says where)."""
    if value is _NO_GOT or isinstance(value, dict):
        return _NO_GOT
    if _SECRET.search(key.rsplit(".", 1)[-1]):
        return "<hidden>"
    return _repr.repr(value)


def _num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, (int, float)) else str(v)


def _join(parts: Sequence[str]) -> str:
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out


def _item_label(items: Any, i: int) -> str:
    """``[i]``, or ``[i:name]`` when the item is a table with a ``name``."""
    try:
        name = items[i].get("name") if isinstance(items[i], dict) else None
    except (IndexError, KeyError, TypeError):
        name = None
    return f"[{i}:{name}]" if isinstance(name, str) and name else f"[{i}]"


def _child(node: Any, part: Any) -> Any:
    try:
        return node[part] if isinstance(node, (dict, list, tuple)) else None
    except (IndexError, KeyError, TypeError):
        return None


def _model_fields(ann: Any) -> dict[str, FieldInfo] | None:
    return ann.model_fields if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _is_union(ann: Any) -> bool:
    return get_origin(ann) in (Union, types.UnionType)


def _strip_optional(ann: Any) -> Any:
    """``X | None`` -> ``X`` (other unions stay)."""
    if _is_union(ann):
        members = [a for a in get_args(ann) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return ann


def _item_type(ann: Any, i: int) -> Any:
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, set, frozenset, Sequence) and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[i] if i < len(args) else None
    return None


def _type_tag(ann: Any) -> str:
    """The name pydantic gives a union member in an error location."""
    if get_origin(ann) is Literal:
        return "literal[" + ",".join(repr(a) for a in get_args(ann)) + "]"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann)
