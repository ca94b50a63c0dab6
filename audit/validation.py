"""The base of every model that validates user input (spec sections, metric params, data-source
options): numbers must be finite, and neither a boolean nor a string is ever taken for a number.

pydantic's lax mode reads ``seed: true`` as 1, ``min: "0.9"`` as 0.9 and ``eps: .nan`` as NaN;
all are mistakes in an audit spec (a quoted threshold is often a template's placeholder), and
a NaN threshold makes every comparison pass. Design §3: thresholds finite; §10: a threshold
written as a string is a spec error.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def _admits(annotation: Any, kind: type, plain: Callable[[Any], bool]) -> bool:
    """Whether a field of this type may hold a value of ``kind``: through ``Annotated``,
    unions and literals, ``plain`` deciding for a plain type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits(typing.get_args(annotation)[0], kind, plain)
    if origin in (typing.Union, types.UnionType):
        return any(_admits(arg, kind, plain) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, kind) for arg in typing.get_args(annotation))
    return plain(annotation)


def _admits_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold ``True`` / ``False``."""
    return _admits(annotation, bool, lambda plain: plain in (bool, Any, object))


def _admits_str(annotation: Any) -> bool:
    """Whether a field of this type may be given as a string: anything but a number (and
    ``None``), so that ``min: "0.9"`` is refused where lax pydantic would read 0.9."""
    return _admits(annotation, str, lambda plain: plain not in (int, float, type(None)))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _misplaced(annotation: Any, value: Any) -> str | None:
    """What ``value`` holds where ``annotation`` wants something else: ``a boolean`` where a
    number is meant, ``the string '0.9'`` for a number in quotes where only numbers are (any
    other string is pydantic's to refuse); looking into lists and tuples, and into unions of
    them. None when nothing is misplaced."""
    if isinstance(value, bool):
        return None if _admits_bool(annotation) else "a boolean"
    if isinstance(value, str):  # what lax pydantic would read as a number
        return None if _admits_str(annotation) or not _numeric(value) else f"the string {value!r}"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _misplaced(args[0], value)
    if origin in (typing.Union, types.UnionType):
        found = [_misplaced(arg, value) for arg in args]
        return None if any(f is None for f in found) else found[0]
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset,
                                                        typing.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(args, value, strict=False)
        else:
            pairs = ((args[0] if args else Any, v) for v in value)
        return next((f for a, v in pairs if (f := _misplaced(a, v)) is not None), None)
    return None


class InputModel(BaseModel):
    """A model of user input: unknown keys refused, numbers finite and never in quotes,
    booleans only where a field is a boolean."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        found = None if field is None else _misplaced(field.annotation, value)
        if found == "a boolean":
            raise ValueError(f"expected {_describe(field.annotation)}, got a boolean")
        if found is not None:
            raise PydanticCustomError(
                "number_from_string", "expected a number, not {found}: write it without quotes",
                {"found": found})
        return value


def _describe(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    return f"a value of type {name}" if name else f"a value of type {annotation}"
