"""Check selection with pytest's ``-k`` / ``-m`` grammar: ``and``, ``or``, ``not``, parentheses.

``-k`` matches a word as a case-insensitive substring of the check id or the metric name (as
pytest matches test names); ``-m`` matches a word exactly against the check's tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from robaudit.errors import UsageError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Matcher = Callable[[str], bool]


def parse_expression(text: str, option: str) -> Callable[[Matcher], bool]:
    """Compile ``text`` into a predicate over a word matcher. Raises UsageError on bad syntax."""
    tokens = _TOKEN.findall(text)
    position = 0

    def fail(what: str) -> UsageError:
        return UsageError(f"{option} {text!r}: {what}")

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def parse_or() -> Callable[[Matcher], bool]:
        left = parse_and()
        while peek() == "or":
            take()
            right, prev = parse_and(), left
            left = lambda m, a=prev, b=right: a(m) or b(m)  # noqa: E731
        return left

    def parse_and() -> Callable[[Matcher], bool]:
        left = parse_not()
        while peek() == "and":
            take()
            right, prev = parse_not(), left
            left = lambda m, a=prev, b=right: a(m) and b(m)  # noqa: E731
        return left

    def parse_not() -> Callable[[Matcher], bool]:
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda m: not inner(m)
        return parse_atom()

    def parse_atom() -> Callable[[Matcher], bool]:
        token = peek()
        if token is None:
            raise fail("expected a word or '(' at the end")
        take()
        if token == "(":
            inner = parse_or()
            if peek() != ")":
                raise fail("expected ')'")
            take()
            return inner
        if token in ("and", "or", ")"):
            raise fail(f"unexpected {token!r}")
        return lambda m: m(token)

    if not tokens:
        raise fail("empty expression")
    predicate = parse_or()
    if position != len(tokens):
        raise fail(f"unexpected {tokens[position]!r}")
    return predicate


def keyword_matches(expression: str, check_id: str, metric: str) -> bool:
    """Whether ``-k expression`` selects a check."""
    names = (check_id.lower(), metric.lower())
    return parse_expression(expression, "-k")(lambda w: any(w.lower() in n for n in names))


def marker_matches(expression: str, tags: tuple[str, ...]) -> bool:
    """Whether ``-m expression`` selects a check with ``tags``."""
    return parse_expression(expression, "-m")(lambda w: w in tags)
