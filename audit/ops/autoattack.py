"""The AutoAttack protocol (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", section 5): APGD-CE, APGD-T,
FAB-T and Square run in that order, each only on the points that every earlier attack left
robust; a point is robust only if every attack fails. Every point an attack returns is
re-checked (:func:`robaudit.ops.verify.verified`) before it counts.

Versions: ``standard`` is the paper's (APGD-CE with ``restarts`` restarts, APGD-T on the top
``targets`` = 9 other classes, FAB-T on as many, Square with ``queries`` = 5000, ``steps`` =
100 iterations each); ``fast`` drops FAB-T (the costliest and the one that adds least
after APGD-T in the paper's Table 2), runs APGD-T on at most 3 targets and Square with at
most 1000 queries; ``custom`` runs the ``attacks`` listed, in the given order.

FAB-T is a minimum-norm attack whose result does not depend on eps: it runs once on every
point of a batch (:func:`robaudit.ops.fab.fab_targeted`, cached by the caller and shared
with ``min_norm_distortion`` and across the eps of a curve) and breaks a still-robust point
when its verified perturbation is within eps. With several eps, they run in increasing
order, and a point broken at an eps is broken at every larger one (its verified
perturbation is within the larger budget too), so each level attacks only what the smaller
ones left robust.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from robaudit.ops.fab import MinNormResult
    from robaudit.ops.projections import Norm

LogitsFn = Callable[["torch.Tensor"], "torch.Tensor"]
AttackName = Literal["apgd-ce", "apgd-t", "fab-t", "square"]
Version = Literal["standard", "fast", "custom"]

STANDARD: tuple[AttackName, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
FAST: tuple[AttackName, ...] = ("apgd-ce", "apgd-t", "square")
#: The attacks that use the model's gradients (all but Square).
WHITE_BOX: frozenset[str] = frozenset({"apgd-ce", "apgd-t", "fab-t"})
FAST_TARGETS, FAST_QUERIES = 3, 1000


@dataclass(frozen=True)
class Protocol:
    """The attacks of a version and their budgets."""

    attacks: tuple[AttackName, ...]
    steps: int
    restarts: int
    targets: int
    queries: int

    @property
    def seed_rows(self) -> int:
        """Random seeds per sample: one per APGD-CE restart, per APGD-T target, and Square's."""
        return self.restarts + self.targets + 1


def protocol(version: Version, attacks: Sequence[AttackName] | None, *, steps: int,
             restarts: int, targets: int, queries: int) -> Protocol:
    """The :class:`Protocol` of ``version`` (``attacks`` only for ``custom``)."""
    if version == "fast":
        return Protocol(FAST, steps, restarts, min(targets, FAST_TARGETS),
                        min(queries, FAST_QUERIES))
    chosen = tuple(attacks or ()) if version == "custom" else STANDARD
    return Protocol(chosen, steps, restarts, targets, queries)


@dataclass(frozen=True)
class Cascade:
    """The protocol on N points at L budgets (columns in the order asked).

    robust     (N, L) bool: clean-correct and no attack broke it.
    broken_by  (N, L) long: 0 robust, k + 1 broken by the k-th attack, −1 misclassified clean.
    margin     (N, L): the lowest margin z_y − max_{j≠y} z_j at any verified attack point
               (NaN where no attack ran: misclassified clean).
    """

    robust: torch.Tensor
    broken_by: torch.Tensor
    margin: torch.Tensor


def autoattack(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    *,
    levels: Sequence[float],
    norm: Norm,
    plan: Protocol,
    seeds: torch.Tensor,
    fab: Callable[[], MinNormResult],
    input_range: tuple[float, float] | None = None,
) -> Cascade:
    """The cascade on ``x`` (labels ``y``, ``clean`` its clean correctness) at every eps of
    ``levels``. ``seeds``: (plan.seed_rows, N) per-sample seeds; ``fab``: FAB-T's result on
    ``x`` (called once, if the plan has FAB-T)."""
    import torch

    from robaudit.ops.verify import verified

    n = x.shape[0]
    robust = clean.clone()
    broken = torch.where(clean, 0, -1).long()
    margin = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    columns: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        logits = logits_fn(x)
    ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(
        dim=1, descending=True)[:, : min(plan.targets, logits.shape[1] - 1)]
    fab_result: list[MinNormResult] = []
    for column, eps in sorted(enumerate(levels), key=lambda item: item[1]):
        for index, name in enumerate(plan.attacks):
            for run in _runs(name, plan, ranked):
                alive = robust.nonzero().squeeze(1)
                if alive.numel() == 0:
                    break
                if name == "fab-t":
                    fab_result = fab_result or [fab()]
                    points = fab_result[0].points.to(x.device, x.dtype)[alive]
                else:
                    points = _attack(logits_fn, name, run, x[alive], y[alive], eps, norm, plan,
                                     seeds[:, alive.cpu()], ranked[alive], input_range)
                ok, reached = verified(logits_fn, x[alive], points, y[alive], norm=norm,
                                       eps=eps, input_range=input_range)
                margin[alive] = torch.minimum(margin[alive], reached)
                robust[alive[ok]] = False
                broken[alive[ok]] = index + 1
        columns[column] = (robust.clone(), broken.clone(),
                           torch.where(clean, margin, torch.full_like(margin, float("nan"))))
    parts = [columns[c] for c in range(len(levels))]
    return Cascade(*(torch.stack([p[i] for p in parts], dim=1) for i in range(3)))


def _runs(name: str, plan: Protocol, ranked: torch.Tensor) -> range:
    """The runs of an attack: APGD-CE's restarts, APGD-T's targets, one otherwise."""
    if name == "apgd-ce":
        return range(plan.restarts)
    if name == "apgd-t":
        return range(ranked.shape[1])
    return range(1)


def _attack(logits_fn: LogitsFn, name: str, run: int, x: torch.Tensor, y: torch.Tensor,
            eps: float, norm: Norm, plan: Protocol, seeds: torch.Tensor, ranked: torch.Tensor,
            input_range: tuple[float, float] | None) -> torch.Tensor:
    """The points of one run of a white-box or black-box attack on the alive points."""
    from robaudit.ops.apgd import apgd
    from robaudit.ops.square import square

    if name == "apgd-ce":
        return apgd(logits_fn, x, y, eps=eps, norm=norm, steps=plan.steps, seeds=seeds[run],
                    loss="ce", input_range=input_range).points
    if name == "apgd-t":
        return apgd(logits_fn, x, y, eps=eps, norm=norm, steps=plan.steps,
                    seeds=seeds[plan.restarts + run], loss="dlr-targeted",
                    target=ranked[:, run], input_range=input_range).points
    return square(logits_fn, x, y, eps=eps, norm=norm, queries=plan.queries,
                  seeds=seeds[plan.restarts + plan.targets], input_range=input_range).points
