"""Nearest neighbours and radius counts, batched on the device with bounded memory.

Both primitives compare ``queries`` (Q×D) with a ``reference`` set (N×D) by Euclidean distance,
one block of ``query_chunk`` × ``reference_chunk`` distances at a time (``torch.cdist``), so
that memory stays O(query_chunk · (reference_chunk + k)) whatever Q and N are. They back the
intertwinedness measures of Ghorbani & Zou (2017, section 2) and any other k-NN statistic.

``torch.cdist`` uses the matrix-product form ‖a‖² + ‖b‖² − 2a·b on large blocks (fast on every
device), whose rounding error grows with ‖a‖²; both sets are therefore first centred on the
reference mean (distances do not change), which keeps the error small for data far from the
origin (images, ReLU features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _blocks(total: int, size: int) -> range:
    return range(0, total, max(1, size))


def _centred(queries: torch.Tensor, reference: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets flattened and shifted by the reference mean (a translation: same distances)."""
    queries, reference = queries.flatten(1), reference.flatten(1)
    centre = reference.mean(dim=0, keepdim=True)
    return queries - centre, reference - centre


def _excluded_block(
    exclude: torch.Tensor | None, q0: int, q1: int, r0: int, r1: int
) -> torch.Tensor | None:
    """A (q1-q0)×(r1-r0) mask of the pairs (query, its excluded reference index) in a block."""
    if exclude is None:
        return None
    columns = torch.arange(r0, r1, device=exclude.device)
    return exclude[q0:q1, None] == columns[None, :]


def knn(
    queries: torch.Tensor,
    reference: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    query_chunk: int = 1024,
    reference_chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference rows of every query, nearest first.

    Returns ``(distances, indices)``, both Q×k. ``exclude`` (Q, long) names one reference index
    per query that may not be chosen (leave-one-out when the queries are the reference set;
    a negative index excludes nothing). Ties are broken by ``torch.topk`` (unspecified order).
    """
    n = reference.shape[0]
    if not 1 <= k <= n - (0 if exclude is None else 1):
        raise ValueError(f"k = {k} neighbours asked from a reference set of {n} rows")
    queries, reference = _centred(queries, reference)
    out_d = torch.empty(queries.shape[0], k, device=queries.device, dtype=queries.dtype)
    out_i = torch.empty(queries.shape[0], k, device=queries.device, dtype=torch.long)
    for q0 in _blocks(queries.shape[0], query_chunk):
        q1 = min(q0 + query_chunk, queries.shape[0])
        best_d = torch.empty(q1 - q0, 0, device=queries.device, dtype=queries.dtype)
        best_i = torch.empty(q1 - q0, 0, device=queries.device, dtype=torch.long)
        for r0 in _blocks(n, reference_chunk):
            r1 = min(r0 + reference_chunk, n)
            dist = torch.cdist(queries[q0:q1], reference[r0:r1])
            mask = _excluded_block(exclude, q0, q1, r0, r1)
            if mask is not None:
                dist = dist.masked_fill(mask, float("inf"))
            index = torch.arange(r0, r1, device=queries.device).expand(q1 - q0, -1)
            cand_d = torch.cat([best_d, dist], dim=1)
            cand_i = torch.cat([best_i, index], dim=1)
            keep = min(k, cand_d.shape[1])
            best_d, pos = cand_d.topk(keep, dim=1, largest=False, sorted=True)
            best_i = cand_i.gather(1, pos)
        out_d[q0:q1], out_i[q0:q1] = best_d, best_i
    return out_d, out_i


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
) -> torch.Tensor:
    """How many reference rows of each label lie within each radius of each query.

    Returns a Q×R×C float tensor (R = len(radii), C = num_classes): entry [q, j, c] counts the
    reference rows of label c at distance <= radii[j] from query q. ``exclude`` as in
    :func:`knn`. Summing over c gives the neighbours within the radius whatever their label.
    """
    queries, reference = _centred(queries, reference)
    device = queries.device
    onehot = torch.nn.functional.one_hot(reference_labels.to(device).long(), num_classes)
    onehot = onehot.to(queries.dtype)
    radius = torch.as_tensor(list(radii), device=device, dtype=queries.dtype)
    counts = torch.zeros(queries.shape[0], len(radius), num_classes, device=device,
                         dtype=queries.dtype)
    for q0 in _blocks(queries.shape[0], query_chunk):
        q1 = min(q0 + query_chunk, queries.shape[0])
        for r0 in _blocks(reference.shape[0], reference_chunk):
            r1 = min(r0 + reference_chunk, reference.shape[0])
            dist = torch.cdist(queries[q0:q1], reference[r0:r1])
            mask = _excluded_block(exclude, q0, q1, r0, r1)
            if mask is not None:
                dist = dist.masked_fill(mask, float("inf"))
            for j in range(len(radius)):
                within = (dist <= radius[j]).to(queries.dtype)
                counts[q0:q1, j] += within @ onehot[r0:r1]
    return counts
