"""Batched DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016): the minimal perturbation
that moves a sample across the nearest decision boundary, by iterated linearisation.

At the iterate x_i the classifier is linearised around the original class k: for each
candidate class j, f'_j = f_j(x_i) − f_k(x_i) (negative while x_i is still classified k) and
w'_j = ∇f_j(x_i) − ∇f_k(x_i). The closest linearised boundary is l = argmin_j |f'_j| / ‖w'_j‖_q
(q the dual norm: q = 2 for ℓ2, q = 1 for ℓ∞), and the step onto it is

    ℓ2:  r_i = (|f'_l| / ‖w'_l‖₂ + s) · w'_l / ‖w'_l‖₂
    ℓ∞:  r_i = (|f'_l| / ‖w'_l‖₁ + s) · sign(w'_l)

with the small slack s = :data:`STEP_SLACK` of the original implementation (so that an
iterate does not land exactly on a tie). The steps are summed into r_tot, the next iterate is
x + (1 + overshoot) · r_tot, and the loop stops as soon as the predicted label differs from k
or after ``max_iter`` steps, as in the paper's Algorithm 2 and the authors' code. These are
the boundary points z = x + r(x) whose curvature Fawzi et al. (CVPR 2018, section 3) study,
and the inner step of universal perturbations (Moosavi-Dezfooli et al. 2017, Algorithm 1).

Two changes to the paper's algorithm make the perturbation smaller, i.e. nearer the minimal
one that ρ_adv estimates (``damping=1, refine=0`` is the paper's algorithm exactly):

- Damped steps: each step is ``damping`` (default :data:`DAMPING` = 0.8) times the
  linearised one, r_i = (0.8 · |f'_l| / ‖w'_l‖ + s) · direction. A full step from x lands
  past the curved boundary of a ReLU network by its linearisation error, along the
  direction of the first linearisation; shorter steps re-linearise on the way and approach
  the boundary from inside. On a linear model the remaining distance shrinks by
  1 − 0.8 (1 + η) ≈ 0.18 per step and the slack s carries the iterate across: about
  log(d/s)/log(5.4) steps, 5 for d = 0.5.
- The final step: the label change is located on the segment from x to the last iterate p
  by ``refine`` bisections (default :data:`REFINE_STEPS`), t_hi the smallest known fraction
  of the segment that changes the label, and the returned point is
  x + min(1, (1 + overshoot) · t_hi) · (p − x) (or x + t_hi · (p − x) in the rare case where
  that point keeps the label k): the nearer of p and the crossing times the overshoot, both
  across. So a search along the returned perturbation cannot shrink it by more than the
  overshoot (and 2⁻¹⁰ of it). It costs one forward pass of the converged samples per
  bisection. On a linear classifier the result lies between the closed-form distance d and
  (1 + overshoot) · d, to the bisection's precision (the paper's is (1 + overshoot)(d + s)).

Measured (bench/peers.py, docs/bench/peers.md; 200 digits test samples, all fooled by every
implementation, mean ρ_adv): on the shipped digits ResNet the paper's algorithm gave 0.1242
(3.5% above ART's 0.1200 and 4.7% above foolbox's 0.1186), with the final bisection alone
0.1194, with damping 0.8 and the bisection 0.1142; on a digits ResNet trained from seed 2,
0.1332 / 0.1292 / 0.1229 against ART's 0.1264 and foolbox's 0.1248. The price is
iterations: 5.1 on average instead of 1.8 (damping 0.9: 3.3 iterations, ρ 0.1167 / 0.1259,
not below foolbox on the second model; 0.5: 11 iterations, 0.1093 / 0.1173).

Choices where the paper is silent or that the batched form needs:

- Candidate classes: the original class k and the ``candidates − 1`` other classes with the
  largest clean logits (the authors' ``num_classes`` = 10 "top" classes). k is the clean
  prediction, or ``labels`` when given (then a sample that is already misclassified has
  changed label before any step: 0 iterations, a zero perturbation, a zero normal).
- Input box: with ``input_range`` every iterate is clipped to the box, and a coordinate that
  sits on a face of the box while the step would push it outwards is removed from the
  linearisation (w' set to 0 there), so the step is the minimal one among the moves that stay
  feasible. (ART and foolbox step along the unconstrained gradient and lose the blocked part
  to the clipping: on the digits ResNets that acts as a damping too, ρ_adv 0.1186 / 0.1248
  with 6.3 iterations, and the damping above does better at fewer iterations.)
  ``perturbation`` is ``boundary − x`` (x + r is the adversarial point in both cases).
- A sample whose candidate gradients all vanish (a flat region) cannot move: it stops, with
  ``converged`` False.
- Batching: only the still-unfooled samples are computed on each iteration (the active
  subset is indexed). The gradients of the candidate differences come from one forward pass
  with ``retain_graph`` and one backward pass per candidate. On a CPU this measured fastest of
  the three exact ways to get them (200 samples, 9 candidate differences, one thread): the
  shipped digits ResNet 114 ms for the loop of backward passes, 145 ms for
  ``autograd.grad(..., is_grads_batched=True)``, 170 ms for ``torch.func.jacrev``; on a
  3-layer MLP all three take 1.6–2.7 ms. (A plain forward+backward of those samples takes
  17 ms on the ResNet, so the floor of an iteration is ≈ (candidates − 1) backward passes.)
  Whether an iterate crossed is checked with a gradient-free forward pass before the gradient
  pass, so no backward pass is spent on a sample that has just been fooled.

The function's memory grows with the batch of ``x`` (about ``candidates`` gradients of the
batch are held at once): callers pass chunks of ``ctx.batch_size`` samples, as
:func:`deepfool_split` does, which keeps the per-sample results of a whole split on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from robaudit.metric import Unit, work_units
from robaudit.ops.projections import Norm, clip_to_box

if TYPE_CHECKING:
    from robaudit.context import AuditContext
    from robaudit.model import ModelUnderAudit

#: The slack added to each linearised step (the original implementation's 1e-4).
STEP_SLACK = 1e-4

#: The fraction of each linearised step taken (see the module docstring; 1 is the paper's).
DAMPING = 0.8

#: Bisections of the final step along the found perturbation (a precision of 2⁻¹⁰ of it).
REFINE_STEPS = 10


@dataclass(frozen=True)
class DeepFoolResult:
    """The outcome of :func:`deepfool` for a batch of N samples (tensors on x's device; those
    of :func:`deepfool_split` on the CPU).

    perturbation  (N, *input) the perturbation r (overshoot included, after the final
                  bisection); x + r is the adversarial point.
    boundary      (N, *input) the point x + r (clipped to ``input_range`` when given).
    crossed_into  (N,) long: the class predicted at ``boundary``.
    iterations    (N,) long: the number of linearised steps taken.
    converged     (N,) bool: the label changed within ``max_iter`` steps.
    normal        (N, *input) unit ℓ2 normal of the last linearised boundary: the normalised
                  gradient of f_l − f_k at the last iterate where a step was computed (zero for
                  a sample that took no step; for a sample pinned by the box, the normal of
                  its nearest boundary ignoring the box).
    """

    perturbation: torch.Tensor
    boundary: torch.Tensor
    crossed_into: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    normal: torch.Tensor

    def to(self, device: torch.device | str) -> DeepFoolResult:
        """The same result with every tensor on ``device``."""
        return DeepFoolResult(*(getattr(self, f.name).to(device) for f in fields(self)))

    def rows(self, index: slice) -> DeepFoolResult:
        """The results of the samples ``index`` (a slice of the batch)."""
        return DeepFoolResult(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: list[DeepFoolResult]) -> DeepFoolResult:
        """The results of consecutive batches as one result."""
        return DeepFoolResult(
            *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(DeepFoolResult))
        )


def deepfool(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    norm: Norm = "l2",
    candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
    input_range: tuple[float, float] | None = None,
    labels: torch.Tensor | None = None,
    damping: float = DAMPING,
    refine: int = REFINE_STEPS,
) -> DeepFoolResult:
    """DeepFool on the batch ``x`` against ``logits_fn`` (e.g. ``ctx.model.logits``).

    See the module docstring for the algorithm and its choices. ``candidates`` counts the
    original class too (at least 2; capped at the number of classes). ``damping``: the
    fraction of each linearised step taken (1 is the paper's); ``refine``: the bisections of
    the final step (0 returns (1 + overshoot) · r_tot; ``damping=1, refine=0`` is the paper's
    algorithm exactly).
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"unknown norm {norm!r}; expected 'l2' or 'linf'")
    if candidates < 2:
        raise ValueError("deepfool needs at least 2 candidate classes")
    if not 0 < damping <= 1:
        raise ValueError("deepfool needs 0 < damping <= 1")
    x = x.detach()
    n = x.shape[0]
    with torch.no_grad():
        clean = logits_fn(x)
    if clean.shape[1] < 2:
        raise ValueError("deepfool needs a classifier with at least 2 classes")
    count = min(candidates, clean.shape[1])
    original = clean.argmax(dim=1) if labels is None else labels.to(x.device).long()
    others = clean.scatter(1, original[:, None], float("-inf")).topk(count - 1, dim=1).indices

    r_tot = torch.zeros_like(x)
    point = x.clone()
    normal = torch.zeros_like(x)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    predicted = clean.argmax(dim=1)
    stuck = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = (predicted == original).nonzero().squeeze(1)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        step, unit_normal, movable = _linearised_step(
            logits_fn, point[active], original[active], others[active], norm, input_range,
            damping,
        )
        normal[active] = unit_normal
        stuck[active[~movable]] = True
        iterations[active[movable]] += 1
        r_tot[active] += step
        point[active] = clip_to_box(x[active] + (1 + overshoot) * r_tot[active], input_range)
        active = active[movable]
        with torch.no_grad():
            predicted[active] = logits_fn(point[active]).argmax(dim=1)
        active = active[predicted[active] == original[active]]

    converged = (predicted != original) & ~stuck & (iterations > 0)
    moved = converged.nonzero().squeeze(1)
    if refine > 0 and moved.numel() > 0:
        point[moved] = _refine(logits_fn, x[moved], point[moved], original[moved], overshoot,
                               refine, input_range)
        with torch.no_grad():
            predicted[moved] = logits_fn(point[moved]).argmax(dim=1)
    return DeepFoolResult(
        perturbation=point - x,
        boundary=point,
        crossed_into=predicted,
        iterations=iterations,
        converged=(predicted != original) & ~stuck,
        normal=normal,
    )



def _linearised_step(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    original: torch.Tensor,
    others: torch.Tensor,
    norm: Norm,
    input_range: tuple[float, float] | None,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DeepFool step at ``point`` (A samples): the step r_i (``damping`` times the
    distance to the linearised boundary, plus the slack), the unit normal of the chosen
    linearised boundary, and which samples could move (a nonzero chosen gradient)."""
    with torch.enable_grad():
        xa = point.detach().requires_grad_(True)
        logits = logits_fn(xa)
        base = logits.gather(1, original[:, None])
        diffs = logits.gather(1, others) - base  # f'_j, shape (A, C-1)
        grads = torch.stack(
            [
                torch.autograd.grad(
                    diffs[:, j].sum(), xa, retain_graph=j < diffs.shape[1] - 1
                )[0]
                for j in range(diffs.shape[1])
            ],
            dim=1,
        )  # w'_j, shape (A, C-1, *input)
    diffs = diffs.detach()
    feasible = grads
    if input_range is not None:
        lo, hi = input_range
        at_lo = (point <= lo).unsqueeze(1)
        at_hi = (point >= hi).unsqueeze(1)
        blocked = (at_lo & (grads < 0)) | (at_hi & (grads > 0))
        feasible = grads.masked_fill(blocked, 0.0)
    flat = feasible.flatten(2)
    dual = flat.norm(p=2, dim=2) if norm == "l2" else flat.abs().sum(dim=2)
    distance = diffs.abs() / dual
    distance = torch.where(dual > 0, distance, torch.full_like(distance, float("inf")))
    rows = torch.arange(point.shape[0], device=point.device)
    movable = torch.isfinite(distance).any(dim=1)
    # A sample pinned by the box keeps the normal of its nearest unconstrained boundary; a
    # candidate with a zero gradient has none (0/0 would be NaN, which argmin picks) and is
    # never nearest.
    raw_dual = grads.flatten(2).norm(p=2, dim=2)
    unconstrained = torch.where(raw_dual > 0, diffs.abs() / raw_dual.clamp_min(1e-30),
                                torch.full_like(raw_dual, float("inf")))
    best = torch.where(movable, distance.argmin(dim=1), unconstrained.argmin(dim=1))
    chosen = feasible[rows, best]
    length = distance[rows, best]
    length = torch.where(movable, damping * length + STEP_SLACK, torch.zeros_like(length))
    shape = (-1, *([1] * (point.dim() - 1)))
    if norm == "l2":
        direction = chosen / dual[rows, best].clamp_min(1e-30).view(shape)
    else:
        direction = chosen.sign()
    raw = grads[rows, best]
    raw_norm = raw.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
    return length.view(shape) * direction, raw / raw_norm, movable


def _refine(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    point: torch.Tensor,
    original: torch.Tensor,
    overshoot: float,
    steps: int,
    input_range: tuple[float, float] | None,
) -> torch.Tensor:
    """The final step: per sample, the label change on the segment from x to ``point``
    (which is misclassified) located by ``steps`` bisections, t_hi the smallest fraction of
    the segment known to change the label; the result is
    x + min(1, (1 + overshoot) · t_hi) · (point − x), or x + t_hi · (point − x) where that
    point keeps the label k. One forward pass of the samples per bisection."""
    direction = point - x
    shape = (-1, *([1] * (x.dim() - 1)))
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    with torch.no_grad():
        for _ in range(steps):
            middle = (low + high) / 2
            changed = logits_fn(x + middle.view(shape) * direction).argmax(dim=1) != original
            high = torch.where(changed, middle, high)
            low = torch.where(changed, low, middle)
        crossing = x + high.view(shape) * direction
        beyond = x + ((1 + overshoot) * high).clamp(max=1.0).view(shape) * direction
        changed = logits_fn(beyond).argmax(dim=1) != original
    return clip_to_box(torch.where(changed.view(shape), beyond, crossing), input_range)


def deepfool_split(
    ctx: AuditContext,
    *,
    split: str | None = None,
    model: ModelUnderAudit | None = None,
    norm: Norm = "l2",
    overshoot: float = 0.02,
    candidates: int = 10,
    max_iter: int = 50,
) -> DeepFoolResult:
    """DeepFool on a whole split, in ``ctx.batch_size`` chunks on ``ctx.device``, clipped to
    the model's input range, from the clean predictions; cached in ``ctx.cache`` under
    ``("deepfool", model.name, split, norm, overshoot, candidates, max_iter)`` so that every
    check that needs the boundary points (distortion, curvature, …) shares one run. The
    chunks are the work units of design §8: a unit that :func:`deepfool_unit` already ran is
    reused, and a unit's numbers are the same whichever of the two ran it.

    The result's tensors are on the CPU: each chunk's result is moved there as soon as it is
    computed, so the device holds one chunk at a time (memory bounded by the batch size, not
    by the split); users move the rows of a batch back with ``.to(ctx.device)``."""
    mua = model or ctx.model
    name = split or ctx.split
    options = (norm, overshoot, candidates, max_iter)

    def compute() -> DeepFoolResult:
        units = work_units(len(ctx.data(name)), ctx.batch_size)
        task = ctx.progress(len(ctx.data(name)), f"DeepFool ({norm}) on {name}")
        parts = []
        for unit in units:  # a unit that deepfool_unit ran is handed over, not held twice
            done = ctx.cache.take(("deepfool", mua.name, name, *options, unit.start, unit.stop))
            parts.append(done if done is not None else _run_unit(ctx, unit, name, mua, options))
            task.advance(len(unit))
        return DeepFoolResult.concat(parts)

    return ctx.cache.get_or_compute(("deepfool", mua.name, name, *options), compute)


def deepfool_unit(
    ctx: AuditContext,
    unit: Unit,
    *,
    split: str | None = None,
    model: ModelUnderAudit | None = None,
    norm: Norm = "l2",
    overshoot: float = 0.02,
    candidates: int = 10,
    max_iter: int = 50,
) -> DeepFoolResult:
    """DeepFool on one work unit of a split (design §8), on the CPU: a slice of
    :func:`deepfool_split`'s result when the run has it, else the unit alone, cached under the
    split's key and the unit's bounds so that every check of the process shares it. When the
    process has then run every unit of the split (one process running a check's units in
    order), their results are also cached as the whole split's, under
    :func:`deepfool_split`'s key, as that function would have cached them."""
    mua = model or ctx.model
    name = split or ctx.split
    options = (norm, overshoot, candidates, max_iter)
    key = ("deepfool", mua.name, name, *options)
    whole = ctx.cache.get(key)
    if whole is not None:
        return whole.rows(unit.indices)
    result = ctx.cache.get_or_compute((*key, unit.start, unit.stop),
                                      lambda: _run_unit(ctx, unit, name, mua, options))
    units = work_units(len(ctx.data(name)), ctx.batch_size)
    if unit.stop == len(ctx.data(name)) and all((*key, part.start, part.stop) in ctx.cache
                                                for part in units):
        deepfool_split(ctx, split=name, model=mua, norm=norm, overshoot=overshoot,
                       candidates=candidates, max_iter=max_iter)  # takes over every unit
    return result


def _run_unit(ctx: AuditContext, unit: Unit, split: str, mua: ModelUnderAudit,
              options: tuple[Norm, float, int, int]) -> DeepFoolResult:
    norm, overshoot, candidates, max_iter = options
    x = ctx.data(split).x[unit.indices].to(ctx.device)
    return deepfool(mua.logits, x, norm=norm, candidates=candidates, overshoot=overshoot,
                    max_iter=max_iter, input_range=mua.input_range).to("cpu")
