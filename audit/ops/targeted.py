"""Batched targeted DeepFool: the minimal ℓ2 perturbation that moves a sample *into* a given
class's region, by iterated linearisation (the projection step of Fawzi et al., CVPR 2018,
Algorithm 1, line 6: r = argmin ‖r‖₂ s.t. k̂(x_m + r) = k̂(x_1)).

Untargeted DeepFool (:mod:`robaudit.ops.deepfool`) leaves the region of class k by crossing the
*nearest* of its linearised boundaries. Entering the region of a target class t needs every
other class j to lose to t, so at the iterate x_i the target region is linearised as the
polyhedron {r : a_j + w_jᵀ r ≥ s‖w_j‖ for every candidate j}, with a_j = f_t(x_i) − f_j(x_i),
w_j = ∇f_t(x_i) − ∇f_j(x_i) and the slack s = :data:`robaudit.ops.deepfool.STEP_SLACK` of the
original implementation, and the step r_i is the exact projection of x_i onto it: the
quadratic programme min ½‖r‖² s.t. W r ≥ b, solved through its dual (r = Wᵀλ, λ ≥ 0
maximising λᵀb − ½ λᵀ W Wᵀ λ) by cyclic coordinate ascent, which is cheap since the dual has
one variable per candidate class, then the exact solve on the active set it finds. When a
single constraint is violated this is DeepFool's own step, r_i = (|a_j| / ‖w_j‖ + s) · w_j /
‖w_j‖; for a linear classifier the first step is the exact minimal perturbation into the
target's region (a polyhedron), up to the slack.

As in DeepFool, the steps are summed into r_tot, the next iterate is x + (1 + overshoot) · r_tot,
and the loop stops as soon as the prediction is t or after ``max_iter`` steps.

Choices:

- Candidates: the ``candidates`` − 1 classes other than t with the largest logits at the current
  iterate (recomputed at every step; with ``candidates`` ≥ the number of classes, all of them).
- Input box: with ``input_range`` every iterate is clipped to the box, and, as in
  :mod:`robaudit.ops.deepfool`, a coordinate that sits on a face of the box is removed from
  every w_j that would push it outwards; since r = Σ λ_j w_j with λ ≥ 0, the step then never
  pushes such a coordinate out of the box (DeepFool's rule: an approximation of the projection
  constrained to the box, not its exact solution). Without this, clipping undoes much of each
  step on images with saturated pixels and the iteration crawls. A target that cannot be
  reached inside the box is not reached within ``max_iter`` steps (``reached`` False).
- A sample already predicted as its target takes no step (zero perturbation, 0 iterations).
- Batching: only the samples not yet in their target class are computed on each iteration; the
  gradients come from one forward pass and one backward pass per candidate, like DeepFool's.
  Memory grows with the batch of ``x`` (``candidates`` − 1 gradients of it at once): callers
  pass chunks of ``ctx.batch_size`` samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from robaudit.ops.deepfool import STEP_SLACK
from robaudit.ops.projections import clip_to_box

#: Coordinate-ascent sweeps of the dual QP per linearised step.
DUAL_SWEEPS = 50
#: The sweeps stop early once no λ_j moves by more than this many units in the last place of
#: the dtype (relative to max(1, |λ_j|)); the exact solve on the active set follows.
DUAL_TOLERANCE = 64


@dataclass(frozen=True)
class TargetedResult:
    """The outcome of :func:`targeted_deepfool` for a batch of N samples.

    perturbation  (N, *input) the total perturbation r (overshoot included).
    point         (N, *input) x + r (clipped to ``input_range`` when given).
    predicted     (N,) long: the class predicted at ``point``.
    reached       (N,) bool: ``predicted`` is the target.
    iterations    (N,) long: the number of linearised steps taken.
    """

    perturbation: torch.Tensor
    point: torch.Tensor
    predicted: torch.Tensor
    reached: torch.Tensor
    iterations: torch.Tensor


def targeted_deepfool(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
    input_range: tuple[float, float] | None = None,
) -> TargetedResult:
    """Targeted DeepFool of the batch ``x`` towards the classes ``target`` (N,) against
    ``logits_fn`` (e.g. ``ctx.model.logits``). See the module docstring for the algorithm.
    ``candidates`` counts the target too (at least 2; capped at the number of classes)."""
    if candidates < 2:
        raise ValueError("targeted deepfool needs at least 2 candidate classes")
    x = x.detach()
    target = target.to(x.device).long()
    n = x.shape[0]
    with torch.no_grad():
        predicted = logits_fn(x).argmax(dim=1)
    r_tot = torch.zeros_like(x)
    point = x.clone()
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    active = (predicted != target).nonzero().squeeze(1)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        step = _projection_step(logits_fn, point[active], target[active], candidates,
                                input_range)
        iterations[active] += 1
        r_tot[active] += step
        point[active] = clip_to_box(x[active] + (1 + overshoot) * r_tot[active], input_range)
        with torch.no_grad():
            predicted[active] = logits_fn(point[active]).argmax(dim=1)
        active = active[predicted[active] != target[active]]
    return TargetedResult(
        perturbation=point - x,
        point=point,
        predicted=predicted,
        reached=predicted == target,
        iterations=iterations,
    )



def _projection_step(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    target: torch.Tensor,
    candidates: int,
    input_range: tuple[float, float] | None,
) -> torch.Tensor:
    """The projection of ``point`` (A samples) onto its linearised target region, moving no
    coordinate that sits on a face of ``input_range`` outwards."""
    with torch.enable_grad():
        xa = point.detach().requires_grad_(True)
        logits = logits_fn(xa)
        count = min(candidates, logits.shape[1]) - 1
        others = logits.detach().scatter(1, target[:, None], float("-inf"))
        others = others.topk(count, dim=1).indices
        margins = logits.gather(1, target[:, None]) - logits.gather(1, others)  # a_j, (A, m)
        grads = torch.stack(
            [
                torch.autograd.grad(margins[:, j].sum(), xa, retain_graph=j < count - 1)[0]
                for j in range(count)
            ],
            dim=1,
        )  # w_j, shape (A, m, *input)
    if input_range is not None:
        lo, hi = input_range
        at_lo = (point <= lo).unsqueeze(1)
        at_hi = (point >= hi).unsqueeze(1)
        grads = grads.masked_fill((at_lo & (grads < 0)) | (at_hi & (grads > 0)), 0.0)
    flat = grads.flatten(2)
    wanted = STEP_SLACK * flat.norm(dim=2) - margins.detach()  # b_j: need w_jᵀ r ≥ b_j
    lam = project_dual(flat @ flat.transpose(1, 2), wanted)
    return (lam.unsqueeze(1) @ flat).view_as(point)


def project_dual(gram: torch.Tensor, wanted: torch.Tensor, sweeps: int = DUAL_SWEEPS
                 ) -> torch.Tensor:
    """λ ≥ 0 maximising λᵀb − ½ λᵀGλ for a batch of Gram matrices G = W Wᵀ (A, m, m) and
    bounds b (A, m), by cyclic coordinate ascent (at most ``sweeps`` sweeps): the dual of
    min ½‖r‖² s.t. W r ≥ b, whose solution is r = Wᵀλ. A coordinate with G_jj = 0 (a zero gradient)
    stays at 0."""
    lam = torch.zeros_like(wanted)
    diagonal = gram.diagonal(dim1=1, dim2=2)
    usable = diagonal > 0
    safe = diagonal.clamp_min(torch.finfo(gram.dtype).tiny)
    for _ in range(sweeps):
        before = lam.clone()
        for j in range(wanted.shape[1]):
            residual = wanted[:, j] - (gram[:, j] * lam).sum(dim=1)
            updated = (lam[:, j] + residual / safe[:, j]).clamp_min(0.0)
            lam[:, j] = torch.where(usable[:, j], updated, lam[:, j])
        tolerance = DUAL_TOLERANCE * torch.finfo(lam.dtype).eps
        if bool(((lam - before).abs() <= tolerance * lam.abs().clamp_min(1.0)).all()):
            break
    return _polish(gram, wanted, lam)


def _polish(gram: torch.Tensor, wanted: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Coordinate ascent converges slowly when gradients are nearly parallel; once it has found
    the active set S = {λ_j > 0}, the exact dual solves G_SS λ_S = b_S. That solution is kept
    where it exists and is non-negative (else the ascent's λ)."""
    active = lam > 0
    both = active[:, :, None] & active[:, None, :]
    system = torch.where(both, gram, torch.zeros_like(gram))
    system = system + torch.diag_embed((~active).to(gram.dtype))
    exact, info = torch.linalg.solve_ex(system, torch.where(active, wanted, 0.0))
    keep = (info == 0) & torch.isfinite(exact).all(dim=1) & (exact >= 0).all(dim=1)
    return torch.where(keep[:, None], exact, lam)
