"""The data-source plugin interface: the values of a spec's ``data.source``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict

from robaudit.validation import InputModel

if TYPE_CHECKING:
    from robaudit.context import DataSplit


class SourceOptions(InputModel):
    """Base of a data source's own keys under ``data:`` (besides the common ones); numbers
    finite and never a boolean."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class DataSource(ABC):
    """Loads the splits of a data set as CPU tensors.

    name      the value of ``data.source``.
    Options   the keys this source accepts under ``data:`` besides ``source``, ``split``,
              ``reference``, ``limit`` and ``batch_size``; validated with the spec.
    """

    name: ClassVar[str]
    Options: ClassVar[type[SourceOptions]] = SourceOptions

    @abstractmethod
    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        """Every split the source has, by name. Paths in ``options`` are relative to
        ``base_dir`` (the spec's folder). Raise :class:`robaudit.UsageError` naming the key
        (e.g. ``data.path``) for data that cannot be loaded."""
