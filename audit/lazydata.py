"""Inputs read on demand from an indexable data set (design §8 "Data at scale").

A data source may hand over a split's inputs as :class:`LazyInputs` rather than one tensor:
the samples are produced one at a time by an indexable data set (``samples[i]`` is one input,
e.g. an image decoded and cropped from its file), and nothing of size N × D is ever held.
:class:`LazyInputs` answers what metrics ask of ``split.x``: ``x[indices]`` (an int, a slice,
an index tensor of any shape, a boolean mask), ``x.shape``, ``x.dtype``, ``x.dim()``, ``len``;
random access decodes in this process. A subset (``limit``) is a new index map, not a copy:
nothing is decoded when samples are chosen. Whole-split passes read batch-aligned units in
index order through a ``torch.utils.data.DataLoader`` with ``workers`` processes
(:meth:`LazyInputs.units`), never a ``DistributedSampler``.

The helpers :func:`unit_inputs`, :func:`row_mean` and :func:`rows_equal` do the same for a
tensor or a :class:`LazyInputs`, a chunk of rows at a time, so that a metric's memory stays
tied to the batch whatever the split's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeAlias

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class SampleSet(Protocol):
    """An indexable data set of inputs: ``len`` samples, ``samples[i]`` the i-th input as a
    float tensor (C×H×W or D), the same shape and dtype for every i. A set may also define
    ``sample_key(i) -> bytes`` (what identifies sample i without decoding it, e.g. a file's
    path, size and modification time) and ``describe() -> dict`` (how samples are made, e.g.
    the image transform), used by the data fingerprint and the report, and ``finite = True``
    when its inputs cannot be NaN or infinite (pixels of image files), which spares the
    finiteness scan before the run a whole decoding pass."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...


class LazyInputs:
    """The inputs of a split, read from ``samples`` at the positions ``indices`` (default:
    all, in order). ``workers`` is the number of DataLoader processes of whole-split passes
    (0: read in this process)."""

    def __init__(self, samples: SampleSet, indices: torch.Tensor | None = None,
                 workers: int = 0) -> None:
        self.samples = samples
        self.indices = (torch.arange(len(samples)) if indices is None
                        else indices.to(torch.long).reshape(-1))
        self.workers = workers
        self._example: tuple[torch.Size, torch.dtype] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    # -- what metrics read of a split's ``x`` ----------------------------------------------
    def _sample_format(self) -> tuple[torch.Size, torch.dtype]:
        """The shape and dtype of one sample (the first of this view, decoded once)."""
        if self._example is None:
            if not len(self):
                raise IndexError("an empty split has no sample shape")
            first = self._read(0)
            self._example = (first.shape, first.dtype)
        return self._example

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._sample_format()[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self._sample_format()[1]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def dim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def finite(self) -> bool:
        """Whether the source guarantees finite inputs (``samples.finite``)."""
        return bool(getattr(self.samples, "finite", False))

    def _read(self, position: int) -> torch.Tensor:
        return self.samples[int(self.indices[position])]

    def __getitem__(self, key: Any) -> torch.Tensor:
        """Decode the samples at ``key`` (an int, a slice, a list, an array or a tensor of
        positions of any shape, or a boolean mask) in this process: a tensor of shape
        ``(*positions.shape, *sample_shape)``; a position asked for twice is decoded once. A
        tuple indexes the samples by its first item, then their values by the rest
        (``x[0, :, 0, 0]``)."""
        if isinstance(key, tuple):
            rows = self[key[0]] if key else self[:]
            batch_dims = rows.dim() - len(self._sample_format()[0])
            return rows[(slice(None),) * batch_dims + key[1:]]
        if isinstance(key, (int, np.integer)) or (
                isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point()
                and key.dtype != torch.bool):
            position = int(key)
            if not -len(self) <= position < len(self):
                raise IndexError(f"index {position} is out of range for {len(self)} samples")
            return self._read(position % len(self))
        if isinstance(key, slice):
            positions = torch.arange(len(self))[key]
        else:
            positions = torch.as_tensor(np.asarray(key) if isinstance(key, list) else key)
            if positions.dtype == torch.bool:
                positions = positions.nonzero().reshape(-1)
            positions = torch.where(positions < 0, positions + len(self), positions).long()
        flat = positions.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples")
        if not flat.numel():
            return torch.empty((*positions.shape, *self._sample_format()[0]),
                               dtype=self.dtype)
        unique, inverse = flat.unique(return_inverse=True)  # each sample decoded once
        rows = torch.stack([self._read(int(p)) for p in unique])[inverse]
        return rows.reshape(*positions.shape, *rows.shape[1:])

    # -- lazy views and batched reads ------------------------------------------------------
    def subset(self, positions: torch.Tensor) -> LazyInputs:
        """The samples at ``positions`` (a LongTensor of positions in this view), nothing
        decoded."""
        return LazyInputs(self.samples, self.indices[positions.to(torch.long)], self.workers)

    def with_workers(self, workers: int) -> LazyInputs:
        """The same view read by ``workers`` DataLoader processes."""
        return LazyInputs(self.samples, self.indices, workers)

    def units(self, bounds: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
        """The inputs of each ``(start, stop)`` range of positions, in the order given, read
        through a DataLoader with :attr:`workers` processes (each range one batch)."""
        if not bounds:
            return
        loader = DataLoader(_Positions(self), batch_sampler=[list(range(a, b)) for a, b in bounds],
                            num_workers=self.workers, collate_fn=torch.stack)
        done = 0
        try:
            for batch in loader:
                yield batch
                done += 1
        except Exception:
            if not self.workers:
                raise
            # a worker's error arrives wrapped in its traceback's text: read the rest in this
            # process, where a sample's error (an unreadable image) is raised as it is
            for start, stop in bounds[done:]:
                yield torch.stack([self._read(p) for p in range(start, stop)])

    # -- identity ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """How the samples are made (the source's ``describe()``), for the report."""
        describe = getattr(self.samples, "describe", None)
        return dict(describe()) if describe is not None else {}

    def fingerprint(self, digest: Any, batch_size: int) -> None:
        """Feed ``digest`` with what identifies these inputs, in sample order: each sample's
        ``sample_key`` when the set has one (nothing decoded), else the decoded inputs as
        float32, a batch at a time."""
        key = getattr(self.samples, "sample_key", None)
        if key is not None:
            digest.update(repr(sorted(self.describe().items())).encode())
            for index in self.indices.tolist():
                digest.update(hashlib.sha256(key(index)).digest())
            return
        bounds = [(a, min(a + batch_size, len(self))) for a in range(0, len(self), batch_size)]
        for x in self.units(bounds):
            digest.update(x.to(torch.float32).contiguous().numpy().tobytes())


class _Positions(Dataset[torch.Tensor]):
    """A :class:`LazyInputs` as a map-style data set of its positions (for the DataLoader)."""

    def __init__(self, inputs: LazyInputs) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.inputs._read(position)


#: What a split's ``x`` is: one CPU tensor, or inputs read on demand.
Inputs: TypeAlias = "torch.Tensor | LazyInputs"


def unit_inputs(x: Inputs, bounds: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """The rows of each ``(start, stop)`` range of ``x``, in the order given: slices of a
    tensor, or DataLoader batches of a :class:`LazyInputs`."""
    if isinstance(x, LazyInputs):
        yield from x.units(bounds)
    else:
        for start, stop in bounds:
            yield x[start:stop]


def chunk_bounds(count: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``size`` rows covering ``count`` rows."""
    return [(start, min(start + size, count)) for start in range(0, count, max(1, size))]


def row_mean(x: Inputs, chunk: int) -> torch.Tensor:
    """The mean row of ``x`` flattened (1×D): of the whole tensor at once for a tensor (as
    ``x.flatten(1).mean(0)``), else summed in float64 ``chunk`` rows at a time."""
    if isinstance(x, torch.Tensor):
        return x.flatten(1).mean(dim=0, keepdim=True)
    total: torch.Tensor | None = None
    for rows in unit_inputs(x, chunk_bounds(len(x), chunk)):
        part = rows.flatten(1).double().sum(dim=0, keepdim=True)
        total = part if total is None else total + part
    assert total is not None, "the mean of no rows"
    return (total / len(x)).to(x.dtype)


def rows_equal(x: Inputs, row: torch.Tensor, chunk: int) -> bool:
    """Whether every row of ``x`` equals ``row`` (one row, of any shape that flattens to
    D), read ``chunk`` rows at a time."""
    flat = row.reshape(1, -1)
    return all(bool((rows.flatten(1).to(flat.device) == flat).all())
               for rows in unit_inputs(x, chunk_bounds(len(x), chunk)))
