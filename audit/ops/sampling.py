"""Per-sample random draws: random numbers that do not depend on how a split is batched.

A metric that draws noise for a whole split one batch at a time from one generator gets
different numbers for different batch sizes whenever a draw's size or order depends on the
batch: ``torch.randn`` fills a tensor in blocks of 16 values (a batch of 7 samples of 3
values draws other numbers than the first 7 rows of a split of 450), interleaved draws
(a direction, then a radius) reorder with the batch, and an attack that draws a new start
only for the samples still standing draws for a batch-dependent subset.

The rule here: a metric draws one integer seed per sample (and per restart or per kind of
draw) for the whole split at once, from the check's generator, before any batching
(:func:`sample_seeds`: N int64 numbers, cheap even for large splits); a batch then draws
each of its samples' random tensor from a generator seeded with that sample's seed
(:func:`per_sample`). A sample's noise is thus a function of the check's seed and its
index only. The per-sample draws loop over the batch's samples on the CPU (a few
microseconds each, next to the model passes that they feed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: Seeds are drawn uniformly from [0, SEED_BOUND) (within torch's int64 seeds).
SEED_BOUND = 2**62


def sample_seeds(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    """An int64 tensor of ``shape`` (e.g. ``(N,)`` or ``(N, restarts)``) of seeds drawn at
    once from ``generator``, on the CPU."""
    return torch.randint(0, SEED_BOUND, shape, generator=generator, dtype=torch.long)


def per_sample(
    seeds: torch.Tensor, draw: Callable[[torch.Generator], torch.Tensor]
) -> torch.Tensor:
    """``draw(g)`` for each seed of the 1-d ``seeds``, with g a CPU generator seeded with that
    seed, stacked along a new first dimension (on the CPU)."""
    generator = torch.Generator()
    return torch.stack([draw(generator.manual_seed(int(s))) for s in seeds.tolist()])


def per_sample_randn(seeds: torch.Tensor, sample_shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise of shape ``(len(seeds), *sample_shape)``, one draw per seed."""
    return per_sample(seeds, lambda g: torch.randn(tuple(sample_shape), generator=g))
