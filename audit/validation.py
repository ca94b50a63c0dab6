"""The base of every model that validates user input (spec sections, metric params, data-source
options): numbers must be finite, and a boolean is never taken for a number.

pydantic's lax mode reads ``seed: true`` as 1 and ``eps: .nan`` as NaN; both are mistakes in an
audit spec, and a NaN threshold makes every comparison pass. Design §3: thresholds finite.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold ``True`` / ``False``."""
    if annotation is bool or annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _admits_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    return False


def _misplaced_bool(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a boolean where ``annotation`` wants something else (looking into
    lists and tuples, and into unions of them)."""
    if isinstance(value, bool):
        return not _admits_bool(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _misplaced_bool(args[0], value)
    if origin in (typing.Union, types.UnionType):
        return all(_misplaced_bool(arg, value) for arg in args)
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset,
                                                        typing.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return any(_misplaced_bool(a, v) for a, v in zip(args, value, strict=False))
        element = args[0] if args else Any
        return any(_misplaced_bool(element, v) for v in value)
    return False


class InputModel(BaseModel):
    """A model of user input: unknown keys refused, numbers finite, booleans only where a
    field is a boolean."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _misplaced_bool(field.annotation, value):
            raise ValueError(f"expected {_describe(field.annotation)}, got a boolean")
        return value


def _describe(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    return f"a value of type {name}" if name else f"a value of type {annotation}"
