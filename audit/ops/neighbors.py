"""Nearest neighbours, radius counts and pair distances, in chunks with bounded memory.

The primitives compare ``queries`` (Q×D) with a ``reference`` set (N×D) by Euclidean distance,
one block of ``query_chunk`` × ``reference_chunk`` distances at a time (``torch.cdist``). The
two sets may live on the CPU (a whole split): only the rows of the current block are moved to
``device``, so that memory stays O((query_chunk + reference_chunk) · D + query_chunk ·
(reference_chunk + k)) whatever Q and N are; nothing of size Q × D or N × D is ever copied.
They back the intertwinedness measures of Ghorbani & Zou (2017, section 2), the distances of
its rank-order deformation (Algorithm 2) and any other k-NN statistic.

``torch.cdist`` uses the matrix-product form ‖a‖² + ‖b‖² − 2a·b on large blocks (fast on every
device), whose rounding error grows with ‖a‖²; every block is therefore first centred on the
reference mean (distances do not change), which keeps the error small for data far from the
origin (images, ReLU features). :func:`pair_distances` takes differences directly instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from robaudit.lazydata import row_mean


@dataclass(frozen=True)
class NeighbourBlock:
    """What :func:`scan_neighbours` found for the queries ``start:stop`` (on the device).

    distances, indices  (stop − start)×k: the k nearest reference rows, nearest first.
    counts              (stop − start)×R×C: reference rows of label c within radii[j]
                        (None when no radii were asked for).
    """

    start: int
    stop: int
    distances: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor | None


#: A chunk of rows holds about batch_size × max(D, CHUNK_VALUES) values (:func:`chunk_rows`).
CHUNK_VALUES = 4096


def chunk_rows(batch_size: int, dim: int) -> int:
    """Rows per chunk of a D-dimensional set: ``batch_size``, or more for small D, so that a
    chunk holds about batch_size × max(D, 4096) values (a batch of inputs for images): memory
    tied to the batch, never to the size of the split."""
    return batch_size * max(1, CHUNK_VALUES // max(1, dim))


def _blocks(total: int, size: int) -> range:
    return range(0, total, max(1, size))


def _rows(points: torch.Tensor, start: int, stop: int, centre: torch.Tensor,
          device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` of ``points``, flattened, on ``device``, shifted by ``centre``."""
    return points[start:stop].flatten(1).to(device) - centre


def scan_neighbours(
    queries: torch.Tensor,
    reference: torch.Tensor,
    k: int = 0,
    *,
    labels: torch.Tensor | None = None,
    radii: Sequence[float] = (),
    num_classes: int = 0,
    exclude: torch.Tensor | None = None,
    query_chunk: int = 1024,
    reference_chunk: int = 8192,
    device: torch.device | str | None = None,
) -> Iterator[NeighbourBlock]:
    """One pass over the query × reference distances, a block of queries at a time.

    For each block of ``query_chunk`` queries, yields its ``k`` nearest reference rows
    (``k = 0``: none) and, when ``radii`` are given, how many reference rows of each of the
    ``num_classes`` ``labels`` lie within each radius (distance <= radius). ``exclude``
    (Q, long) names one reference index per query that is no neighbour of it (leave-one-out
    when the queries are the reference set; a negative index excludes nothing). Ties in the
    k nearest are broken by ``torch.topk`` (unspecified order). ``device`` (default: the
    queries') is where the blocks are computed; results are on it.
    """
    device = torch.device(device) if device is not None else queries.device
    n = reference.shape[0]
    if k and not 1 <= k <= n - (0 if exclude is None else 1):
        raise ValueError(f"k = {k} neighbours asked from a reference set of {n} rows")
    centre = row_mean(reference, reference_chunk).to(device)
    radius = torch.as_tensor(list(radii), device=device, dtype=centre.dtype)
    onehot = None
    if len(radius):
        if labels is None:
            raise ValueError("radius counts need the reference labels")
        onehot = torch.nn.functional.one_hot(labels.to(device).long(), num_classes)
        onehot = onehot.to(centre.dtype)
    exclude = exclude.to(device) if exclude is not None else None
    for q0 in _blocks(queries.shape[0], query_chunk):
        q1 = min(q0 + query_chunk, queries.shape[0])
        block = _rows(queries, q0, q1, centre, device)
        best_d = torch.empty(q1 - q0, 0, device=device, dtype=block.dtype)
        best_i = torch.empty(q1 - q0, 0, device=device, dtype=torch.long)
        counts = (torch.zeros(q1 - q0, len(radius), num_classes, device=device,
                              dtype=block.dtype) if onehot is not None else None)
        for r0 in _blocks(n, reference_chunk):
            r1 = min(r0 + reference_chunk, n)
            dist = torch.cdist(block, _rows(reference, r0, r1, centre, device))
            if exclude is not None:
                columns = torch.arange(r0, r1, device=device)
                dist = dist.masked_fill(exclude[q0:q1, None] == columns[None, :], float("inf"))
            if k:
                index = torch.arange(r0, r1, device=device).expand(q1 - q0, -1)
                cand_d = torch.cat([best_d, dist], dim=1)
                cand_i = torch.cat([best_i, index], dim=1)
                keep = min(k, cand_d.shape[1])
                best_d, pos = cand_d.topk(keep, dim=1, largest=False, sorted=True)
                best_i = cand_i.gather(1, pos)
            if counts is not None and onehot is not None:
                for j in range(len(radius)):
                    within = (dist <= radius[j]).to(block.dtype)
                    counts[:, j] += within @ onehot[r0:r1]
        yield NeighbourBlock(q0, q1, best_d, best_i, counts)


def knn(
    queries: torch.Tensor,
    reference: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    query_chunk: int = 1024,
    reference_chunk: int = 8192,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference rows of every query, nearest first.

    Returns ``(distances, indices)``, both Q×k, on ``device``; ``exclude`` and ties as in
    :func:`scan_neighbours`.
    """
    if k < 1:
        raise ValueError(f"k = {k} neighbours asked for")
    blocks = list(scan_neighbours(queries, reference, k, exclude=exclude,
                                  query_chunk=query_chunk, reference_chunk=reference_chunk,
                                  device=device))
    return (torch.cat([b.distances for b in blocks]), torch.cat([b.indices for b in blocks]))


def radius_label_counts(
    queries: torch.Tensor,
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    radii: Sequence[float],
    num_classes: int,
    *,
    exclude: torch.Tensor | None = None,
    query_chunk: int = 1024,
    reference_chunk: int = 8192,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """How many reference rows of each label lie within each radius of each query.

    Returns a Q×R×C float tensor (R = len(radii), C = num_classes): entry [q, j, c] counts the
    reference rows of label c at distance <= radii[j] from query q. ``exclude`` as in
    :func:`scan_neighbours`. Summing over c gives the neighbours within the radius whatever
    their label.
    """
    blocks = scan_neighbours(queries, reference, labels=reference_labels, radii=radii,
                             num_classes=num_classes, exclude=exclude, query_chunk=query_chunk,
                             reference_chunk=reference_chunk, device=device)
    return torch.cat([b.counts for b in blocks if b.counts is not None])


def pair_distances(
    a: torch.Tensor,
    b: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    chunk: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """‖a[first] − b[second]‖₂ for index tensors of the same shape, ``chunk`` pairs at a time.

    Only one chunk of gathered rows (2 · chunk · D values) is in memory at once, on ``device``
    (default: ``a``'s); the result has ``first``'s shape, on ``device``. Differences are taken
    directly (``torch.cdist`` without the ‖a‖² + ‖b‖² − 2a·b expansion, whose cancellation
    would reorder nearly equal distances), one pair at a time: a pair's distance does not
    depend on the chunk it falls in, nor on the other pairs asked for.
    """
    device = torch.device(device) if device is not None else a.device
    flat_first, flat_second = first.reshape(-1), second.reshape(-1)
    out = torch.empty(flat_first.shape[0], device=device, dtype=a.dtype)
    for start in _blocks(flat_first.shape[0], chunk):
        stop = min(start + chunk, flat_first.shape[0])
        left = a[flat_first[start:stop].to(a.device)].flatten(1).to(device)
        right = b[flat_second[start:stop].to(b.device)].flatten(1).to(device)
        out[start:stop] = torch.cdist(
            left[:, None], right[:, None], compute_mode="donot_use_mm_for_euclid_dist"
        ).view(-1)
    return out.view(first.shape)
