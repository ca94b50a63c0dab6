"""Text from specs and plugins made safe for a terminal (design §9), and numbers as the reports
write them."""

from __future__ import annotations

import re

#: C0 controls but tab and newline, DEL, and C1 controls: what a terminal would act on (colours,
#: cursor moves, titles, bells) rather than show.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` as a string whose control characters are shown escaped (``\\x1b``), never sent
    raw to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def plural(count: int, word: str) -> str:
    """``1 check``, ``2 checks``: a count with its noun, as pytest writes them."""
    return f"{count} {word}{'s' if count != 1 else ''}"


def interval(ci: tuple[float, float]) -> str:
    """A 95% interval as ``[low, high]`` with 4 significant digits: readable when its ends are
    negative (``[-0.1016, -0.0564]``, not ``-0.1016–-0.0564``)."""
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]"
