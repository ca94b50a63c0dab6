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

After the paper's steps comes a final step that makes the perturbation smaller, i.e. nearer
the minimal one that ρ_adv estimates (``refine=0`` skips it: the paper's algorithm exactly,
with ``keep=candidates``):

- Line search: the label change on the segment from x to the last iterate p is located by
  regula falsi on the margin f_k − max_{j≠k} f_j (Illinois' variant, :func:`_search`), to
  2⁻⁵ of the segment when a projection follows, else to 2⁻ʳᵉᶠⁱⁿᵉ (``refine``, default
  :data:`REFINE_STEPS` = 10): a few forward passes of the converged samples.
- Projection (``project`` rounds, default :data:`PROJECT_ROUNDS` = 1): at that crossing z,
  into class c, the boundary f_c − f_k is linearised once more (one gradient pass, of one
  class) and x is projected onto its tangent plane; the label change along that direction,
  within the current length, is located by a line search to 2⁻ʳᵉᶠⁱⁿᵉ. The shorter of it and
  the crossing on the segment is kept per sample (the segment's search is finished where the
  projection does not come below its bracket), so the result is never longer than the
  crossing along the paper's direction. This is in the spirit of the projection steps of
  SuperDeepFool (Abdollahi et al., "Revisiting DeepFool", 2023): a DeepFool point
  overshoots the curved boundary of a ReLU network along the first linearisation's
  direction, and the normal at the boundary point points nearer to the minimal
  perturbation.
- The returned point is the crossing pushed out by 2⁻ʳᵉᶠⁱⁿᵉ of its length (so that a
  re-check in another batch still finds it across), verified by a fresh forward pass; the
  overshoot η only scales the paper's iterates x + (1 + η) r_tot, as in the paper, where it
  serves to cross. On a linear classifier the result is the closed-form distance d to that
  precision (the paper's is (1 + η)(d + s)).
- Candidate classes after the first step (``keep``, default :data:`KEEP_CANDIDATES` = 3):
  the first step linearises all ``candidates − 1`` classes; each later ℓ2 step only the
  ``keep`` whose linearised boundaries were nearest at the previous step. This is a
  heuristic, not a bound: it is tested to leave the result unchanged on a 10-class ReLU MLP
  (on the shipped digits ResNet's 450 test samples, with the paper's steps: 446 unchanged
  with keep = 2, 448 with 3, all with 4). ℓ∞ steps move every coordinate by the whole step
  and reorder the boundaries more (keep = 3 changed one of 60 samples of that MLP), so ℓ∞
  keeps them all.

Measured (bench/peers.py, docs/bench/peers.md; 200 digits test samples, all fooled by every
implementation, mean ρ_adv, CPU time, one thread): on the shipped digits ResNet the paper's
algorithm gives 0.1242 (ART 1.20: 0.1200, foolbox 3.3: 0.1186), with the line search alone
0.1185, with the projection 0.1116, in about the time of the paper's steps (the pruned later
steps pay for the searches and the projection's gradient; ART at its batch of 200 took
33.4×, 30.7× and 28.4× robaudit's CPU time in three runs on a shared machine). Of the model
work, 2,243 samples through forward passes and 2,453 through backward passes on those 200,
1,800 backward passes are the first step's 9 class gradients. The damped steps that issue 8
used (0.8 of each step, 5.1 steps instead of 1.8) gave 0.1142 in 2.0–3.0× the time.

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
  with 6.3 iterations, and the final step above does better at fewer iterations.)
  ``perturbation`` is ``boundary − x`` (x + r is the adversarial point in both cases).
- A sample whose candidate gradients all vanish (a flat region) cannot move: it stops, with
  ``converged`` False.
- Batching: only the still-unfooled samples are computed on each iteration (the active
  subset is indexed). The gradients of the candidate differences come from one forward pass
  with ``retain_graph`` and one backward pass per candidate. On a CPU this measured fastest of
  the three exact ways to get them (200 samples, 9 candidate differences, one thread): the
  shipped digits ResNet 114 ms for the loop of backward passes, 145 ms for
  ``autograd.grad(..., is_grads_batched=True)``, 170 ms for ``torch.func.jacrev`` (and one
  forward and backward pass of the batch repeated 9 times, 185 ms against 86–106 ms for the
  loop in a later run); on a
  3-layer MLP all three take 1.6–2.7 ms. (A plain forward+backward of those samples takes
  17 ms on the ResNet, so the floor of an iteration is ≈ (candidates − 1) backward passes.)
  Whether an iterate crossed is checked with a gradient-free forward pass before the gradient
  pass, so no backward pass is spent on a sample that has just been fooled. The clean pass
  keeps its graph, from which the first step's gradients are taken when every sample takes
  that step (no sample misclassified against ``labels``): one forward pass of the batch fewer,
  the same numbers.

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

#: The precision of the line searches: each brackets its label change to 2⁻¹⁰ of its segment.
REFINE_STEPS = 10

#: The precision 2⁻⁵ of the first line search when projection rounds follow it.
COARSE_STEPS = 5

#: Rounds of projection onto the tangent plane of the boundary after the line search.
PROJECT_ROUNDS = 1

#: Classes linearised on every step after the first: those nearest at the previous step.
KEEP_CANDIDATES = 3


@dataclass(frozen=True)
class DeepFoolResult:
    """The outcome of :func:`deepfool` for a batch of N samples (tensors on x's device; those
    of :func:`deepfool_split` on the CPU).

    perturbation  (N, *input) the perturbation r (after the final step); x + r is the
                  adversarial point.
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
    damping: float = 1.0,
    refine: int = REFINE_STEPS,
    project: int = PROJECT_ROUNDS,
    keep: int = KEEP_CANDIDATES,
    classes: torch.Tensor | None = None,
) -> DeepFoolResult:
    """DeepFool on the batch ``x`` against ``logits_fn`` (e.g. ``ctx.model.logits``).

    See the module docstring for the algorithm and its choices. ``candidates`` counts the
    original class too (at least 2; capped at the number of classes). ``damping``: the
    fraction of each linearised step taken (1, the default, is the paper's); ``keep``: the
    classes linearised on each ℓ2 step after the first (the nearest ``keep`` of the previous
    step; ``keep >= candidates − 1`` linearises them all, as the paper; ℓ∞ always linearises
    them all, see the module docstring); ``refine``: the
    precision 2⁻ʳᵉᶠⁱⁿᵉ of the line searches (0: no line search, no projection, the result is
    (1 + overshoot) · r_tot); ``project``: the projection rounds after the line search.
    ``refine=0, keep=candidates`` is the paper's algorithm exactly. ``classes``: per sample,
    the classes other than k that the first step linearises (an (N, m) tensor; default: the
    ``candidates − 1`` with the highest clean logits), e.g. those a previous run found nearest.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"unknown norm {norm!r}; expected 'l2' or 'linf'")
    if candidates < 2 or keep < 1:
        raise ValueError("deepfool needs at least 2 candidate classes and keep >= 1")
    if not 0 < damping <= 1:
        raise ValueError("deepfool needs 0 < damping <= 1")
    x = x.detach()
    n = x.shape[0]
    graph = _graph(logits_fn, x)  # the clean pass, whose graph the first step reuses
    clean = graph[1].detach()
    if clean.shape[1] < 2:
        raise ValueError("deepfool needs a classifier with at least 2 classes")
    count = min(candidates, clean.shape[1])
    original = clean.argmax(dim=1) if labels is None else labels.to(x.device).long()
    others = (clean.scatter(1, original[:, None], float("-inf")).topk(count - 1, dim=1).indices
              if classes is None else classes.to(x.device).long())

    r_tot = torch.zeros_like(x)
    point = x.clone()
    normal = torch.zeros_like(x)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    predicted = clean.argmax(dim=1)
    margin = _margin(clean, original)
    stuck = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = (predicted == original).nonzero().squeeze(1)
    if active.numel() < n:  # the first step reuses the clean graph only where all take it
        graph = None
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        if graph is None:
            graph = _graph(logits_fn, point[active])
        step, unit_normal, movable, distance = _linearised_step(
            graph, point[active], original[active], others[active], norm, input_range, damping)
        graph = None
        if norm == "l2" and keep < others.shape[1]:  # the next step: the nearest ``keep``
            nearest = others[active].gather(1, distance.argsort(dim=1)[:, :keep])
            others = others[:, :keep].clone()
            others[active] = nearest
        normal[active] = unit_normal
        stuck[active[~movable]] = True
        iterations[active[movable]] += 1
        r_tot[active] += step
        point[active] = clip_to_box(x[active] + (1 + overshoot) * r_tot[active], input_range)
        active = active[movable]
        with torch.no_grad():
            logits = logits_fn(point[active])
        predicted[active] = logits.argmax(dim=1)
        margin[active] = _margin(logits, original[active])
        active = active[predicted[active] == original[active]]

    converged = (predicted != original) & ~stuck & (iterations > 0)
    moved = converged.nonzero().squeeze(1)
    if refine > 0 and moved.numel() > 0:
        start = _margin(clean[moved], original[moved])
        point[moved], predicted[moved] = _shorten(
            logits_fn, x[moved], point[moved], original[moved], (start, margin[moved]), norm,
            refine, project, input_range)
    return DeepFoolResult(
        perturbation=point - x,
        boundary=point,
        crossed_into=predicted,
        iterations=iterations,
        converged=(predicted != original) & ~stuck,
        normal=normal,
    )


def _margin(logits: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """f_k − max_{j≠k} f_j per sample: positive while k is predicted."""
    base = logits.gather(1, original[:, None]).squeeze(1)
    return base - logits.scatter(1, original[:, None], float("-inf")).amax(dim=1)


def _size(v: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = v.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def _graph(logits_fn: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A leaf copy of ``point`` that requires the gradient and its logits, with the graph."""
    with torch.enable_grad():
        xa = point.detach().requires_grad_(True)
        return xa, logits_fn(xa)


def _linearised_step(
    graph: tuple[torch.Tensor, torch.Tensor],
    point: torch.Tensor,
    original: torch.Tensor,
    others: torch.Tensor,
    norm: Norm,
    input_range: tuple[float, float] | None,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DeepFool step at ``point`` (A samples), from ``graph`` (:func:`_graph` of the
    point): the step r_i (``damping`` times the distance to the linearised boundary, plus the
    slack), the unit normal of the chosen linearised boundary, which samples could move (a
    nonzero chosen gradient) and the distance to each candidate's linearised boundary (inf for
    a zero gradient)."""
    xa, logits = graph
    with torch.enable_grad():
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
    return length.view(shape) * direction, raw / raw_norm, movable, distance


def _shorten(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    point: torch.Tensor,
    original: torch.Tensor,
    margins: tuple[torch.Tensor, torch.Tensor],
    norm: Norm,
    refine: int,
    project: int,
    input_range: tuple[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final step (module docstring): the label change on the segment from x to
    ``point`` (misclassified) by a line search, ``project`` rounds of projection onto the
    tangent plane of the boundary there, each kept only where it is shorter, and the shortest
    crossing pushed out by 2⁻ʳᵉᶠⁱⁿᵉ of its length where that still changes the label.
    Returns the points and their predicted labels, from a fresh forward pass of each returned
    point (where the pushed-out point keeps the label k, the crossing's own pass).
    ``margins``: the margins (:func:`_margin`) at x and at ``point``. With projection rounds the
    first search stops at 2⁻⁵ of the segment (the crossing is only where the boundary is
    linearised) and is finished to 2⁻ʳᵉᶠⁱⁿᵉ where no projection came below its near end: the
    result is never longer than the crossing along the segment."""
    shape = (-1, *([1] * (x.dim() - 1)))
    segment = point - x
    ones = torch.ones_like(margins[0])
    coarse = refine if project == 0 else min(refine, COARSE_STEPS)
    bracket = _search(logits_fn, x, segment, original, (0 * ones, ones, *margins),
                      ones * 2.0**-coarse, 3 * coarse, input_range)
    best = clip_to_box(x + bracket[1].view(shape) * segment, input_range)
    size = _size(best - x, norm)
    for _ in range(project):
        candidate = _projected(logits_fn, x, best, original, margins[0], size, norm, refine,
                               input_range)
        candidate_size = _size(candidate - x, norm)
        shorter = candidate_size < size
        best = torch.where(shorter.view(shape), candidate, best)
        size = torch.where(shorter, candidate_size, size)
    # Where no projection came below the coarse bracket's near end, the crossing along the
    # segment may still be the shorter: finish its search and keep the shorter of the two.
    near = _size(clip_to_box(x + bracket[0].view(shape) * segment, input_range) - x, norm)
    rest = (size >= near).nonzero().squeeze(1)
    if coarse < refine and rest.numel() > 0:
        finer = _search(logits_fn, x[rest], segment[rest], original[rest],
                        (bracket[0][rest], bracket[1][rest], bracket[2][rest], bracket[3][rest]),
                        ones[rest] * 2.0**-refine,
                        3 * refine, input_range)
        crossing = clip_to_box(x[rest] + finer[1].view(shape) * segment[rest], input_range)
        shorter = _size(crossing - x[rest], norm) < size[rest]
        best[rest] = torch.where(shorter.view(shape), crossing, best[rest])
    beyond = clip_to_box(x + (1 + 2.0**-refine) * (best - x), input_range)
    with torch.no_grad():
        predicted = logits_fn(beyond).argmax(dim=1)
        kept = (predicted == original).nonzero().squeeze(1)
        if kept.numel() > 0:
            predicted[kept] = logits_fn(best[kept]).argmax(dim=1)
    changed = (predicted != original).view(shape)
    return torch.where(changed, beyond, best), predicted


def _projected(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    crossing: torch.Tensor,
    original: torch.Tensor,
    start: torch.Tensor,
    size: torch.Tensor,
    norm: Norm,
    refine: int,
    input_range: tuple[float, float] | None,
) -> torch.Tensor:
    """One projection round: at the ``crossing`` z (misclassified, into class c), the
    boundary of g = f_c − f_k is linearised, g(x + r) ≈ g(z) + ∇g(z)ᵀ(x + r − z), and x is
    projected onto that plane: the minimal r (in ``norm``, without the coordinates that the box
    blocks at x) has size s* = a / ‖∇g‖_dual, a = ∇g(z)ᵀ(z − x) − g(z). The label change
    along r within the current ``size`` (shorter perturbations only) is bracketed by x and
    the point just short of ``size`` (where that changes the label) and located by the line
    search to 2⁻ʳᵉᶠⁱⁿᵉ of s*; the result is that crossing, or x + inf where there is none (or
    a ≤ 0). ``start``: the margins at x. One gradient pass, the forward pass of the bracket's
    outer end and those of the search. (Probing s* first to narrow the bracket, as an earlier
    version did, cost more passes than it saved: on the digits ResNet the boundary lies beyond
    the plane at 195 of 200 crossings, and regula falsi from x finds it in as many passes.)"""
    shape = (-1, *([1] * (x.dim() - 1)))
    with torch.enable_grad():
        za = crossing.detach().requires_grad_(True)
        logits = logits_fn(za)
        crossed = logits.detach().argmax(dim=1, keepdim=True)
        gap = logits.gather(1, crossed) - logits.gather(1, original[:, None])
        (grad,) = torch.autograd.grad(gap.sum(), za)
    if input_range is not None:
        lo, hi = input_range
        grad = grad.masked_fill(((x <= lo) & (grad < 0)) | ((x >= hi) & (grad > 0)), 0.0)
    flat = grad.flatten(1)
    reach = (flat * (crossing - x).flatten(1)).sum(dim=1) - gap.detach().squeeze(1)
    if norm == "l2":
        dual = flat.norm(dim=1)
        direction = grad / dual.clamp_min(1e-30).view(shape)
    else:
        dual = flat.abs().sum(dim=1)
        direction = grad.sign()
    plane = torch.where(dual > 0, reach / dual.clamp_min(1e-30), torch.zeros_like(reach))
    # The label change within the current size, where the point just short of it changes the
    # label: located from x (margin ``start``) to there. The search's grid is scaled by a
    # length just past the plane, so that the plane is no grid point: on a piecewise linear
    # model it is often the boundary itself, where the batch's arithmetic would decide the side.
    scale = torch.minimum(plane * (1 + 2.0 ** -(refine + 4)), size)
    outer = size * (1 - 2.0**-refine)
    rows = (plane > 0).nonzero().squeeze(1)
    changed, margin = _probe(logits_fn, x, direction, original, outer[rows], rows, input_range)
    rows, margin = rows[changed], margin[changed]
    out = x + float("inf")
    if rows.numel() > 0:
        bracket = _search(logits_fn, x[rows], direction[rows], original[rows],
                          (0 * margin, outer[rows], start[rows], margin),
                          scale[rows] * 2.0**-refine, 3 * refine, input_range)
        out[rows] = clip_to_box(x[rows] + bracket[1].view(shape) * direction[rows],
                                input_range)
    return out


def _probe(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    direction: torch.Tensor,
    original: torch.Tensor,
    t: torch.Tensor,
    rows: torch.Tensor,
    input_range: tuple[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the samples ``rows``: whether x + t·direction (clipped to the box, ``t`` one per row
    of ``rows``) changes the label, and its margin. One forward pass of those samples."""
    if rows.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device), t
    shape = (-1, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        logits = logits_fn(clip_to_box(x[rows] + t.view(shape) * direction[rows], input_range))
    return logits.argmax(dim=1) != original[rows], _margin(logits, original[rows])


Bracket = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _search(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    direction: torch.Tensor,
    original: torch.Tensor,
    bracket: Bracket,
    tolerance: torch.Tensor,
    evaluations: int,
    input_range: tuple[float, float] | None,
) -> Bracket:
    """The label change on x + t·direction (clipped to the box) in the ``bracket`` (low,
    high, margin at low ≥ 0, margin at high ≤ 0: low keeps the label k, high changes it),
    narrowed to ``tolerance`` by regula falsi on the margin, Illinois' variant (an end kept
    twice in a row has its margin halved), which converges superlinearly on a continuous
    margin such as a ReLU network's: on the digits ResNet it closes a bracket to 2⁻¹⁰ in
    three or four forward passes of the rows still open, where a bisection needs ten; at
    most ``evaluations`` passes. The points are rounded to a grid of 1/16 of the tolerance, so
    that the result of a sample does not depend on the batch it is in (a point on the crossing
    itself would be decided by the last bits of the batch's arithmetic). Returns the bracket."""
    shape = (-1, *([1] * (x.dim() - 1)))
    low, high = bracket[0].clone(), bracket[1].clone()
    m_low, m_high = bracket[2].clamp_min(0.0), bracket[3].clamp_max(0.0)
    grid = tolerance / 16
    side = torch.zeros_like(low, dtype=torch.long)  # +1: the last point changed the label
    for _ in range(evaluations):
        rows = ((high - low) > tolerance).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        lo, hi, step = low[rows], high[rows], grid[rows]
        t = hi - m_high[rows] * (hi - lo) / (m_high[rows] - m_low[rows])
        t = torch.where((t > lo) & (t < hi), t, (lo + hi) / 2)
        t = torch.minimum(torch.maximum((t / step).round() * step, lo + step), hi - step)
        with torch.no_grad():
            logits = logits_fn(clip_to_box(x[rows] + t.view(shape) * direction[rows],
                                           input_range))
        changed = logits.argmax(dim=1) != original[rows]
        m = _margin(logits, original[rows])
        low[rows] = torch.where(changed, lo, t)
        high[rows] = torch.where(changed, t, hi)
        m_low[rows] = torch.where(changed, m_low[rows] / torch.where(side[rows] > 0, 2.0, 1.0),
                                  m.clamp_min(0.0))
        m_high[rows] = torch.where(changed, m.clamp_max(0.0),
                                   m_high[rows] / torch.where(side[rows] < 0, 2.0, 1.0))
        side[rows] = torch.where(changed, 1, -1)
    return low, high, m_low, m_high


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
    the model's input range, from the clean predictions: the results of every work unit
    (:func:`deepfool_unit`, design §8), concatenated on the CPU.

    Memory: the result holds three inputs' size per sample of the split, so a check that
    must stay within the memory of a batch iterates over :func:`deepfool_unit` instead (every
    check of robaudit does); the concatenation is not cached, its units are (within the run
    cache's budget)."""
    name = split or ctx.split
    units = work_units(len(ctx.data(name)), ctx.batch_size)
    task = ctx.progress(len(ctx.data(name)), f"DeepFool ({norm}) on {name}")
    parts = []
    for unit in units:
        parts.append(deepfool_unit(ctx, unit, split=name, model=model, norm=norm,
                                   overshoot=overshoot, candidates=candidates,
                                   max_iter=max_iter))
        task.advance(len(unit))
    return DeepFoolResult.concat(parts)


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
    """DeepFool on one work unit of a split (design §8), on the CPU, cached in ``ctx.cache``
    under ``("deepfool", model.name, split, norm, overshoot, candidates, max_iter, start,
    stop)`` so that every check of the process that needs it (distortion, curvature, UAP's
    normals, transfer, min_norm) shares one run per (model, split, params).

    The entry is bounded (:class:`~robaudit.context.RunCache`): a unit that does not fit the
    cache's budget is run again when it is asked for next, with the same numbers (DeepFool
    is deterministic on a unit: the same samples in the same batch; on a GPU, as far as its
    kernels are, see ``torch.use_deterministic_algorithms``), so a run's memory is bounded by
    the budget and the batch, not by the split's size times the input's."""
    mua = model or ctx.model
    name = split or ctx.split
    options = (norm, overshoot, candidates, max_iter)
    return ctx.cache.get_or_compute(("deepfool", mua.name, name, *options, unit.start, unit.stop),
                                    lambda: _run_unit(ctx, unit, name, mua, options),
                                    bounded=True)


def _run_unit(ctx: AuditContext, unit: Unit, split: str, mua: ModelUnderAudit,
              options: tuple[Norm, float, int, int]) -> DeepFoolResult:
    norm, overshoot, candidates, max_iter = options
    x = ctx.data(split).x[unit.indices].to(ctx.device)
    return deepfool(mua.logits, x, norm=norm, candidates=candidates, overshoot=overshoot,
                    max_iter=max_iter, input_range=mua.input_range).to("cpu")
