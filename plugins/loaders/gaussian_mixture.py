"""The ``gaussian_mixture`` data source: labelled Gaussian clusters with a controllable
intertwinedness (Ghorbani & Zou 2017, Appendix E, Algorithm 3)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from robaudit import hookimpl
from robaudit.datasource import DataSource, SourceOptions

if TYPE_CHECKING:
    from robaudit import DataSplit

#: Bytes a sample value takes while the mixture is drawn: the float32 noise, the shifted and
#: clipped copy, and the split tensor returned.
BYTES_PER_VALUE = 12


def physical_memory() -> float:
    """The machine's memory in bytes (infinite where the platform does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return math.inf


class MixtureOptions(SourceOptions):
    clusters: int = Field(20, ge=1, description="C, the number of Gaussian clusters")
    points: int = Field(100, ge=1, description="n, training points per cluster")
    test_points: int = Field(25, ge=1, description="test points per cluster (same means)")
    sigma: float = Field(0.15, gt=0, description="standard deviation of every coordinate")
    dim: int = Field(10, ge=1, description="d, the dimension of flat samples (N×d)")
    shape: list[int] | None = Field(
        None, min_length=1, max_length=3,
        description="the shape of one sample, e.g. [1, 16, 16] for C×H×W images (replaces dim)",
    )
    labels: int = Field(2, ge=2, description="L, the number of class labels")
    separation: float = Field(
        1.0, gt=0,
        description="scales the distances between cluster means about the centre of the box: "
                    "1 = Algorithm 3's uniform means; smaller = more intertwined",
    )
    box: tuple[float, float] = Field((0.0, 1.0), description="the box [low, high]^d")
    seed: int = Field(0, ge=0, le=2**63 - 1,
                      description="the data's own seed (independent of the audit seed)")

    @model_validator(mode="after")
    def _consistent(self) -> MixtureOptions:
        if self.shape is not None and "dim" in self.model_fields_set:
            raise ValueError("give either `dim` or `shape`, not both")
        if self.shape is not None and any(s < 1 for s in self.shape):
            raise ValueError("every entry of shape must be >= 1")
        if not self.box[0] < self.box[1]:
            raise ValueError(f"box must be [low, high] with low < high, got {list(self.box)}")
        needed = self.clusters * (self.points + self.test_points) * math.prod(self.sample_shape)
        needed *= BYTES_PER_VALUE
        if needed > physical_memory() / 2:
            raise ValueError(f"the mixture needs about {needed / 2**30:,.1f} GiB "
                             f"(clusters × (points + test_points) × sample size); this machine "
                             f"has {physical_memory() / 2**30:,.1f} GiB")
        return self

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape) if self.shape is not None else (self.dim,)


def mixture_splits(options: MixtureOptions) -> dict[str, DataSplit]:
    """The "train" and "test" splits of the mixture that ``options`` describe (Algorithm 3).

    For each of the C clusters: a label drawn uniformly from {0, …, L−1}, a mean
    μ = c + separation·(u − c) with u ~ U(box^d) and c the centre of the box, then ``points``
    (train) and ``test_points`` (test) samples from N(μ, σ²I), clipped to the box. Each split
    is shuffled. Everything is drawn from one generator seeded with ``options.seed``.
    """
    import torch

    from robaudit import DataSplit

    g = torch.Generator().manual_seed(options.seed)
    low, high = options.box
    d = 1
    for s in options.sample_shape:
        d *= s
    labels = torch.randint(0, options.labels, (options.clusters,), generator=g)
    uniform = low + (high - low) * torch.rand(options.clusters, d, generator=g)
    centre = 0.5 * (low + high)
    means = centre + options.separation * (uniform - centre)
    splits = {}
    for name, per_cluster in (("train", options.points), ("test", options.test_points)):
        noise = torch.randn(options.clusters, per_cluster, d, generator=g)
        x = (means[:, None, :] + options.sigma * noise).clamp(low, high).reshape(-1, d)
        y = labels.repeat_interleave(per_cluster)
        order = torch.randperm(x.shape[0], generator=g)
        splits[name] = DataSplit(x[order].reshape(-1, *options.sample_shape).float(), y[order])
    return splits


class GaussianMixture(DataSource):
    """Labelled Gaussian clusters in a box, with a knob for how intertwined the classes are.

    Ghorbani & Zou (2017), Appendix E, Algorithm 3: C clusters, each given a random label of L
    and a mean drawn uniformly in the box [0, 256]^d; n points per cluster from N(μ, σI),
    clipped to the box. Section 3 controls intertwinedness "by increasing the ℓ2 distance
    between expected values": here ``separation`` scales every mean's offset from the centre of
    the box (so all distances between means scale by it); small separations give heavily
    intertwined classes, large ones well separated clusters.

    Choices: the box defaults to [0, 1] (the default ``input_range``; the paper's [0, 256]
    scaled by 1/256); σ is the standard deviation of each coordinate (the paper writes N(μ, σI),
    ambiguous between variance and deviation); a separation above 1 can put means outside the
    box, whose points are then clipped onto its faces as in Algorithm 3. ``shape`` makes the
    samples C×H×W images (for the CNNs of Appendix A) instead of flat vectors of ``dim``. The
    data has its own ``seed`` (default 0), so it does not change with the audit's seed. Splits:
    "train" (``points`` per cluster) and "test" (``test_points`` per cluster, same means).
    """

    name: ClassVar[str] = "gaussian_mixture"
    Options: ClassVar[type[SourceOptions]] = MixtureOptions

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        return mixture_splits(options)


@hookimpl
def robaudit_register_data_sources(register: Callable[[DataSource], None]) -> None:
    register(GaussianMixture())
