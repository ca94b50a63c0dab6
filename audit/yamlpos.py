"""Line numbers of key paths in a YAML document, for located spec errors."""

from __future__ import annotations

from collections.abc import Sequence

import yaml


def line_of(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that exists in ``root``."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


#: Limits on a spec's YAML structure (design §9: aliases bounded). A real spec has a few hundred
#: nodes and a nesting depth under 10; past these it is a mistake or an attack ("billion laughs").
MAX_DEPTH = 64
MAX_NODES = 100_000


def structure_problems(root: yaml.Node | None) -> list[tuple[int, str]]:
    """``(line, message)`` for each duplicate mapping key, each mapping or list nested deeper
    than :data:`MAX_DEPTH`, and a document whose aliases expand past :data:`MAX_NODES` nodes.

    Aliases are references to one node, so the expanded size is counted with a memo per node
    and never built; a self-referencing anchor counts as too deep."""
    problems: list[tuple[int, str]] = []
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _TooDeep(node.start_mark.line + 1)
        if id(node) in sizes:
            return sizes[id(node)]
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        problems.append((line, f"duplicate key {key.value!r} (first on line "
                                               f"{seen[key.value]})"))
                    seen.setdefault(key.value, line)
                total += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        sizes[id(node)] = total
        return total

    if root is None:
        return problems
    try:
        if size(root, 0) > MAX_NODES:
            problems.append((1, f"the document expands to more than {MAX_NODES:,} nodes "
                                "(aliases that multiply); a spec is far smaller"))
    except _TooDeep as exc:
        problems.append((exc.line, f"nested more than {MAX_DEPTH} levels deep (or an anchor "
                                   "that contains itself)"))
    return problems


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line
