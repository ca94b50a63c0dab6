"""``lbfgs_min_distortion``: box-constrained L-BFGS adversarial examples (Szegedy et al. 2014)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, Histogram, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from robaudit.context import AuditContext

LogitsFn = Callable[["torch.Tensor"], "torch.Tensor"]
Loss = Literal["cross_entropy", "margin"]

#: The logit margin by which the ``margin`` loss asks the target to lead (so that the
#: minimiser lies strictly inside the target's region, not on a tie).
MARGIN = 1e-2

#: The default size of one L-BFGS-B problem, in variables (samples × input dimension):
#: scipy's L-BFGS-B holds about 430 bytes per variable (its m = 10 correction pairs and
#: work arrays, float64), so 2¹⁸ variables bound its host memory by about 110 MB.
CHUNK_VARIABLES = 2**18


class LBFGSParams(MetricParams):
    target: Literal["random", "all"] = Field(
        "random", description="one random other label per sample, or every other label"
    )
    search_steps: int = Field(
        10, ge=1, le=100, description="rounds of the geometric search over the penalty c"
    )
    c_init: float = Field(1.0, gt=0, description="the penalty c of the first round")
    max_iter: int = Field(100, ge=1, le=10_000, description="L-BFGS-B iterations per round")
    loss: Loss = Field(
        "cross_entropy",
        description="loss_f: cross-entropy of the target (the paper's), or the logit margin "
                    "max(max_j≠l f_j − f_l + 0.01, 0), which reaches closer to the minimum",
    )
    chunk: int | None = Field(
        None, ge=1,
        description="problems (samples × targets) per L-BFGS-B run; default: as many as "
                    "hold 2^18 variables (4096 samples of 8×8, 85 of 3×32×32, 1 of 3×224×224)",
    )
    max_failures: float = Field(
        0.5, ge=0, le=1,
        description="the check errors when more than this share of the problems fail (the "
                    "value would then mostly be the box bound that failures count at)",
    )


def target_loss(logits: torch.Tensor, target: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Σ_i loss_f(x_i + r_i, l_i) from the logits: the cross-entropy of the target, or the
    hinge on the target's lead over the best other class (:data:`MARGIN`)."""
    import torch
    import torch.nn.functional as F

    if loss == "cross_entropy":
        return F.cross_entropy(logits, target, reduction="sum")
    lead = logits.gather(1, target[:, None]).squeeze(1)
    best_other = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1)
    return torch.relu(best_other - lead + MARGIN).sum()


def minimise_penalty(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    target: torch.Tensor,
    c: torch.Tensor,
    input_range: tuple[float, float],
    max_iter: int,
    loss: Loss = "cross_entropy",
) -> torch.Tensor:
    """argmin_r Σ_i c_i‖r_i‖₂² + loss_f(x_i + r_i, target_i) subject to x + r in the box, by
    one L-BFGS-B run over the concatenated r of the batch (the sum is separable, so its
    exact minimiser is the tuple of the per-sample minimisers; the run's curvature memory,
    line search and stopping tests are shared, so the result matches it to the solver's
    tolerance only). The gradient comes from torch; BLAS is held to one thread inside
    L-BFGS-B, whose vector operations are too small to gain from more (and slow down by an
    order of magnitude on a busy machine). scipy is imported here, not when the plugins load
    (it costs the command line's start-up)."""
    import numpy as np
    import torch
    from scipy.optimize import Bounds, minimize
    from threadpoolctl import threadpool_limits

    shape = x.shape
    lo, hi = input_range
    base = x.detach().double().cpu().numpy().ravel()
    weight = c.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        r = torch.from_numpy(flat).view(shape).to(x.device, x.dtype).requires_grad_(True)
        with torch.enable_grad():
            total = (weight * r * r).sum() + target_loss(logits_fn(x + r), target, loss)
            (grad,) = torch.autograd.grad(total, r)
        return float(total.detach()), grad.double().cpu().numpy().ravel()

    with threadpool_limits(limits=1, user_api="blas"):
        solution = minimize(
            objective, np.zeros_like(base), jac=True, method="L-BFGS-B",
            bounds=Bounds(lo - base, hi - base), options={"maxiter": max_iter},
        )
    return torch.from_numpy(solution.x).view(shape).to(x.device, x.dtype)


def minimal_distortion(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    target: torch.Tensor,
    input_range: tuple[float, float],
    *,
    search_steps: int,
    c_init: float,
    max_iter: int,
    loss: Loss = "cross_entropy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the smallest ‖r‖₂² found whose x + r is classified ``target``, by a search
    over c (see :class:`LBFGSMinDistortion`), and whether any round reached the target."""
    import torch

    n = x.shape[0]
    c = torch.full((n,), c_init, dtype=torch.float64)
    lowest_fail = torch.full((n,), float("inf"), dtype=torch.float64)
    highest_success = torch.zeros(n, dtype=torch.float64)
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    for _ in range(search_steps):
        r = minimise_penalty(logits_fn, x, target, c, input_range, max_iter, loss)
        with torch.no_grad():
            success = (logits_fn(x + r).argmax(dim=1) == target).cpu()
        squared = r.flatten(1).double().pow(2).sum(dim=1).cpu()
        best = torch.where(success & (squared < best), squared, best)
        highest_success = torch.where(success, torch.maximum(highest_success, c), highest_success)
        lowest_fail = torch.where(success, lowest_fail, torch.minimum(lowest_fail, c))
        c = torch.where(
            torch.isinf(lowest_fail),
            c * 10,
            torch.where(highest_success == 0, c / 10, (highest_success * lowest_fail).sqrt()),
        )
    return best, torch.isfinite(best)


class LBFGSMinDistortion(Metric):
    """Average minimum distortion √(‖r‖²/m) of targeted box-constrained L-BFGS examples.

    Szegedy et al. (2014), section 4.1: for a target label l, minimise c·|r| + loss_f(x + r, l)
    subject to x + r in the input box with box-constrained L-BFGS, searching over c for the
    penalty at which the minimiser still satisfies f(x + r) = l; section 4.2 reports the
    average distortion √(Σ(x'_i − x_i)²/m) (m the input dimension; Table 1's "Av. min.
    distortion"). value: its mean over all problems (higher = larger perturbations needed =
    more robust), a failed problem counted at the search's upper bound (below); details: the
    share of problems that failed, and the mean over the successful ones alone.

    Failures: a problem fails when no round of the c search reaches the target. Its minimal
    distortion is then unknown, but the search could not have found more than the farthest
    point of the input box from x, √(Σ_i max(x_i − lo, hi − x_i)²/m): a failure counts at
    that bound (its per-sample value in ``samples``), so the value is the mean of per-problem
    upper bounds, as a successful distortion is one too, and a failure cannot lower it by
    being left out (the mean over the successes alone averages the easy problems only:
    ``details.mean_successful``). When more than ``max_failures`` of the problems fail the
    value would mostly be that bound, and the check errors (raise ``search_steps`` or
    ``max_iter``); ``details.failure_rate`` gives the share otherwise.

    Choices where the paper is terse:

    - |r| is ‖r‖₂² (smooth, so L-BFGS's curvature model holds at r = 0; the penalty family
      traces the same minimisers as with ‖r‖₂, reparametrised in c).
    - loss_f ("a continuous loss function") is by default the cross-entropy of l. Its penalty
      minimisers are not the nearest points of l's region even for a linear classifier (the
      cross-entropy also pushes away from the non-binding classes), so the distortion is an
      upper bound of the minimum: on linear 4-class models it lands 4–30% above the exact
      (QP) distance, exact only for two classes. ``loss: margin`` uses the hinge
      max(max_j≠l f_j − f_l + 0.01, 0), an exact penalty: for small enough c its minimiser is
      the nearest point whose target logit leads by 0.01, within 2% of the exact distance on
      the same models (L-BFGS copes with the kink at the boundary, at about 5× the
      iterations).
    - The paper asks for the "minimum c"; with c weighting |r| a smaller c only makes the
      distortion larger (c → 0 just minimises the loss), so we read it as the largest c whose
      minimiser still reaches l, i.e. the smallest distortion. Search, per sample: start at
      ``c_init``; after a success c ×= 10 until a failure, after a failure c /= 10 until a
      success; once both are seen, c = the geometric mean of the largest success and the
      smallest failure (bisection in log c). The smallest ‖r‖ of any successful round is kept.
    - Targets: ``random`` draws one label per sample uniformly among the labels other than
      the model's clean prediction (from the check's generator); ``all`` uses every other label
      (K − 1 problems per sample; ``details.mean_untargeted`` then averages the per-sample
      minimum over targets). Every sample of the split is attacked; its origin is its
      predicted class, as for DeepFool.
    - Chunks: one L-BFGS-B run (scipy) solves ``chunk`` problems at once, consecutive slices
      of the split's problems in order, whatever ``batch_size`` (the model sees a chunk at a
      time). scipy holds about 430 bytes per variable, so the default chunk is the number of
      problems that hold :data:`CHUNK_VARIABLES` variables: host memory is bounded by about
      110 MB whatever the split size and input dimension, and a chunk of 3×224×224 inputs is
      one sample. The objective is a sum of independent per-problem terms, so its exact
      minimiser is the tuple of the per-problem minimisers, but the solver's iterates are not
      per problem: the curvature memory (the last ``m`` = 10 step and gradient pairs), the
      line search and the stopping tests (``max_iter``, the tolerances on the summed objective
      and its projected gradient) are shared by a chunk. Results therefore depend on
      ``chunk`` (not on ``batch_size``): within the solver's tolerance when every problem
      converges within ``max_iter``, else by more, as a larger chunk shares the iterations
      among more problems (a random-weight CNN at 3×32×32, 16 samples: 0.2056 in one run of
      16 in 39 s, 0.2007 in runs of 4 in 73 s, one thread).

    Runs whole on one process: a problem's result depends on the other problems of its
    L-BFGS-B chunk, whose ``chunk`` problems do not align with the batch-aligned work units
    that shards split (design §8), so splitting by unit would change the values.
    """

    name: ClassVar[str] = "lbfgs_min_distortion"
    Params: ClassVar[type[MetricParams]] = LBFGSParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Szegedy et al. 2014, section 4.1 (box-constrained L-BFGS)"

    def compute(self, ctx: AuditContext, params: LBFGSParams) -> MetricResult:
        import numpy as np
        import torch

        logits = ctx.logits()
        predicted = logits.argmax(dim=1).cpu()
        n, classes = logits.shape
        if classes < 2:
            raise MetricError("lbfgs_min_distortion needs a model with at least 2 classes")
        if params.target == "random":
            shift = torch.randint(1, classes, (n,), generator=ctx.generator)
            sample = torch.arange(n)
            target = (predicted + shift) % classes
        else:
            sample = torch.arange(n).repeat_interleave(classes - 1)
            shift = torch.arange(1, classes).repeat(n)
            target = (predicted[sample] + shift) % classes
        data = ctx.data()
        dim = int(data.x[0].numel())
        chunk = params.chunk or max(1, CHUNK_VARIABLES // dim)
        squared = torch.empty(sample.shape[0], dtype=torch.float64)
        bound = torch.empty(sample.shape[0], dtype=torch.float64)
        lo, hi = ctx.model.input_range
        task = ctx.progress(sample.shape[0], "L-BFGS minimal distortion")
        for start in range(0, sample.shape[0], chunk):
            rows = slice(start, start + chunk)
            x_cpu = data.x[sample[rows]]
            bound[rows] = torch.maximum(x_cpu - lo, hi - x_cpu).flatten(1).double().pow(2).sum(1)
            x = x_cpu.to(ctx.device)
            squared[rows], _ = minimal_distortion(
                ctx.model.logits, x, target[rows].to(ctx.device), ctx.model.input_range,
                search_steps=params.search_steps, c_init=params.c_init, max_iter=params.max_iter,
                loss=params.loss,
            )
            task.advance(x.shape[0])
        distortion = (squared / dim).sqrt().numpy()
        found = np.isfinite(distortion)
        failure_rate = float(1 - found.mean())
        if failure_rate > params.max_failures:
            raise MetricError(
                f"L-BFGS failed to reach the target on {failure_rate:.0%} of the problems "
                f"(more than max_failures = {params.max_failures:g}); "
                + self._why_failed(ctx, sample[~torch.from_numpy(found)], target[
                    ~torch.from_numpy(found)])
            )
        scored = np.where(found, distortion, (bound / dim).sqrt().numpy())
        value = float(scored.mean())
        details: dict[str, float | int | None] = {
            "failure_rate": failure_rate,
            "failures": int((~found).sum()),
            "mean_successful": float(distortion[found].mean()) if found.any() else None,
            "mean_failure_bound": float(scored[~found].mean()) if not found.all() else None,
            "problems": int(distortion.size),
            "chunk": chunk,
            "input_dim": dim,
        }
        if params.target == "all":
            per_sample = scored.reshape(n, classes - 1).min(axis=1)
            details["mean_untargeted"] = float(per_sample.mean())
        return MetricResult(
            value=value,
            samples=scored,
            details=details,
            figures=[Histogram(
                title="L-BFGS minimum distortion √(‖r‖²/m) (successful problems)",
                values=tuple(distortion[found]), xlabel="distortion",
                markers={"mean (failures at the box bound)": value},
            )],
        )

    @staticmethod
    def _why_failed(ctx: AuditContext, sample: torch.Tensor, target: torch.Tensor) -> str:
        """The likely cause of the failures, from the first failed problems: a target logit
        margin whose input gradient is 0 everywhere (the output does not depend on the
        input), else the search's budget or the box."""
        import torch

        rows = slice(0, 64)
        x = ctx.data().x[sample[rows]].to(ctx.device).requires_grad_(True)
        with torch.enable_grad():
            logits = ctx.model.logits(x)
            own = logits.argmax(dim=1)
            index = torch.arange(len(x), device=logits.device)
            margin = logits[index, target[rows].to(logits.device)] - logits[index, own]
            (grad,) = torch.autograd.grad(margin.sum(), x)
        if bool((grad.flatten(1) == 0).all()):
            return ("the gradient of the target logit margin is 0 at every failed problem: the "
                    "model's output does not depend on its input there (constant logits, dead "
                    "units)")
        return ("raise search_steps or max_iter, or the target classes cannot be reached "
                "inside the input box")

    def floor(self, ctx: AuditContext, params: LBFGSParams) -> Floor:
        n = len(ctx.data())
        classes = ctx.model.num_classes(ctx.data().x)
        problems = n if params.target == "random" else n * (classes - 1)
        return Floor(
            forward=n + problems * params.search_steps,
            gradient=problems * params.search_steps * params.max_iter,
            note="max_iter loss gradients per problem and round of the c search (a batch's "
                 "summed objective rarely meets L-BFGS-B's tolerance before max_iter)",
        )


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(LBFGSMinDistortion())
