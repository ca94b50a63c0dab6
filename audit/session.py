"""The runner: validate every spec, select checks, set up models and data, run, report."""

from __future__ import annotations

import argparse
import hashlib
import platform
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from robaudit.context import AuditContext, DataSplit, RunCache, silent_progress
from robaudit.errors import MetricError, ParamError, SpecError, UsageError
from robaudit.model import ModelUnderAudit
from robaudit.ops.stats import mean_interval
from robaudit.pluginmanager import Plugins
from robaudit.results import AuditResult, CheckResult, Outcome
from robaudit.selection import keyword_matches, marker_matches
from robaudit.spec import AuditSpec, Check, ModelSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_CHECKS = range(6)


@dataclass
class AuditPlan:
    """One spec about to run: the selected checks and where they run."""

    spec: AuditSpec
    checks: list[Check]
    deselected: int
    device: torch.device
    data_summary: dict[str, int] = field(default_factory=dict)


def check_seed(seed: int, check_id: str) -> int:
    """The seed of one check: from the spec seed and the check id only, so that a check's
    numbers do not change when other checks are added, removed or deselected."""
    digest = hashlib.sha256(f"{seed}:{check_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device: {name!r} was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device: {name!r}: only {torch.cuda.device_count()} CUDA device(s) are present"
            )
    return device


def environment(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "device_name": name}


def outcome_of(value: float, expect: dict[str, float]) -> tuple[Outcome, str]:
    """Compare a value with ``min`` / ``max`` thresholds; the message says why."""
    low, high = expect.get("min"), expect.get("max")
    if low is not None and value < low:
        return "failed", f"{value:.4g} < min {low:.4g}"
    if high is not None and value > high:
        return "failed", f"{value:.4g} > max {high:.4g}"
    parts = []
    if low is not None:
        parts.append(f"{value:.4g} >= {low:.4g}")
    if high is not None:
        parts.append(f"{value:.4g} <= {high:.4g}")
    return "passed", " and ".join(parts) or f"{value:.4g} (no threshold)"


class Session:
    """Runs specs with the loaded plugins and the parsed command-line options."""

    def __init__(self, plugins: Plugins, options: argparse.Namespace) -> None:
        self.plugins = plugins
        self.options = options
        self.hook = plugins.hook
        self.maxfail: int = getattr(options, "maxfail", 0) or 0
        self.failures = 0

    # -- validation and selection ---------------------------------------------------------
    def overrides(self) -> list[str]:
        extra = list(getattr(self.options, "overrides", None) or [])
        if getattr(self.options, "device", None):
            extra.append(f"device={self.options.device}")
        if getattr(self.options, "seed", None) is not None:
            extra.append(f"seed={self.options.seed}")
        return extra

    def load(self, paths: list[str]) -> list[AuditSpec]:
        """Validate every spec before anything runs; report every problem of every spec."""
        specs, problems = [], []
        for path in paths:
            try:
                specs.append(load_spec(path, self.plugins, self.overrides()))
            except SpecError as exc:
                problems.extend(exc.problems)
        if problems:
            raise SpecError(problems)
        return specs

    def plan(self, spec: AuditSpec) -> AuditPlan:
        keyword = getattr(self.options, "keyword", None)
        markexpr = getattr(self.options, "markexpr", None)
        selected = [
            check for check in spec.checks
            if (not keyword or keyword_matches(keyword, check.id, check.metric.name))
            and (not markexpr or marker_matches(markexpr, check.tags))
        ]
        return AuditPlan(spec, selected, len(spec.checks) - len(selected),
                         resolve_device(spec.model.device))

    # -- set-up ----------------------------------------------------------------------------
    def build_model(self, plan: AuditPlan, key: str, entry: ModelSpec) -> ModelUnderAudit:
        try:
            module = self.hook.robaudit_load_model(
                config=entry.model_dump(), base_dir=plan.spec.base_dir
            )
            if module is None:
                raise UsageError("no plugin could load this model entry")
            normalize = (entry.normalize.mean, entry.normalize.std) if entry.normalize else None
            return ModelUnderAudit(module, input_range=entry.input_range, normalize=normalize,
                                   features=entry.features, device=plan.device, name=key)
        except UsageError as exc:
            raise UsageError(f"{plan.spec.path}: {key}.{exc}") from None

    def load_data(self, plan: AuditPlan) -> dict[str, DataSplit]:
        spec = plan.spec
        data = spec.model.data
        source = self.plugins.data_sources[data.source]
        try:
            splits = source.load(spec.source_options, spec.base_dir, spec.model.seed)
        except UsageError as exc:
            raise UsageError(f"{spec.path}: {exc}") from None
        for key in ("split", "reference"):
            name = getattr(data, key)
            explicit = key == "split" or key in data.model_fields_set
            if name not in splits and explicit:
                raise UsageError(
                    f"{spec.path}: data.{key}: split {name!r} does not exist in "
                    f"{data.source!r}; available: {', '.join(sorted(splits))}"
                )
        if data.limit is not None and data.limit < len(splits[data.split]):
            chosen = splits[data.split]
            generator = torch.Generator().manual_seed(spec.model.seed)
            keep = torch.randperm(len(chosen), generator=generator)[: data.limit].sort().values
            splits[data.split] = DataSplit(chosen.x[keep], chosen.y[keep])
        if data.reference not in splits:  # a single-split source: the reference is the split
            splits[data.reference] = splits[data.split]
        plan.data_summary = {name: len(split) for name, split in splits.items()}
        return splits

    # -- running ---------------------------------------------------------------------------
    def check_context(self, check: Check, base: AuditContext) -> AuditContext:
        """The context of one check: the run's, with the check's own seed and generator."""
        seed = check_seed(base.seed, check.id)
        torch.manual_seed(seed)
        return AuditContext(
            model=base.model, splits=base.splits, split=base.split, reference=base.reference,
            batch_size=base.batch_size, device=base.device, seed=seed,
            generator=torch.Generator().manual_seed(seed), run_seed=base.run_seed,
            models=base.models, progress=base.progress, cache=base.cache,
        )

    def run_check(self, check: Check, ctx: AuditContext) -> CheckResult:
        """Compute one check and judge it; a metric that raises makes it ``error``."""
        params = check.params.model_dump(mode="json")
        start = time.perf_counter()
        common = {"id": check.id, "metric": check.metric.name, "expect": check.expect,
                  "params": params, "tags": check.tags,
                  "higher_is_better": check.metric.higher_is_better}
        try:
            result = check.metric.compute(ctx, check.params)
            value = float(result.value)
        except (MetricError, UsageError) as exc:
            return CheckResult(outcome="error", value=None, ci=None, details={},
                               message=str(exc), duration_s=time.perf_counter() - start,
                               **common)
        except Exception as exc:  # a broken metric must not stop the other checks
            return CheckResult(outcome="error", value=None, ci=None, details={},
                               message=f"{type(exc).__name__}: {exc}",
                               duration_s=time.perf_counter() - start,
                               traceback=traceback.format_exc(), **common)
        duration = time.perf_counter() - start
        samples = None if result.samples is None else np.asarray(result.samples, dtype=float)
        ci = result.ci if result.ci is not None else (
            mean_interval(samples) if samples is not None else None)
        if not np.isfinite(value):
            outcome: Outcome = "error"
            message = f"the metric returned a non-finite value ({value})"
        else:
            outcome, message = outcome_of(value, check.expect)
        return CheckResult(
            outcome=outcome, value=value if np.isfinite(value) else None,
            ci=None if ci is None else (float(ci[0]), float(ci[1])),
            details=result.details, message=message, duration_s=duration,
            samples=None if samples is None else tuple(samples.tolist()),
            figures=tuple(result.figures), **common,
        )

    def check_params_against_data(self, plan: AuditPlan, base: AuditContext) -> None:
        """Every selected check's :meth:`Metric.check_data`, before any check runs."""
        problems = []
        for check in plan.checks:
            try:
                check.metric.check_data(self.check_context(check, base), check.params)
            except ParamError as exc:
                problems.append(plan.spec.locate(("checks", check.index, "params", exc.key),
                                                 exc.message))
        if problems:
            raise SpecError(problems)

    def prepare(self, plan: AuditPlan, stack: ExitStack) -> AuditContext:
        """Build a plan's models, load its data and check its params against the data: all
        that can be a usage error. The runner prepares every spec before any check runs, so
        that an invalid second spec stops the session before the first one has run."""
        spec = plan.spec
        models = {"model": self.build_model(plan, "model", spec.model.model)}
        for name, entry in spec.model.models.items():
            models[name] = self.build_model(plan, f"models.{name}", entry)
        for mua in models.values():
            stack.enter_context(mua)
        splits = self.load_data(plan)
        seed = spec.model.seed
        base = AuditContext(
            model=models["model"], splits=splits, split=spec.model.data.split,
            reference=spec.model.data.reference, batch_size=spec.model.data.batch_size,
            device=plan.device, seed=seed, generator=torch.Generator().manual_seed(seed),
            run_seed=seed, models=models, cache=RunCache(),
            progress=self.hook.robaudit_progress(options=self.options) or silent_progress,
        )
        self.check_params_against_data(plan, base)
        return base

    def run_plan(self, plan: AuditPlan, base: AuditContext, result: AuditResult) -> bool:
        """Run a plan's checks into ``result``; False when ``--maxfail`` stopped the session."""
        self.hook.robaudit_audit_start(plan=plan)
        for check in plan.checks:
            check_result = self.run_check(check, self.check_context(check, base))
            result.checks.append(check_result)
            self.hook.robaudit_check_finished(result=check_result)
            if check_result.outcome in ("failed", "error"):
                self.failures += 1
                if self.maxfail and self.failures >= self.maxfail:
                    return False
        return True

    def run(self, paths: list[str]) -> tuple[list[AuditResult], int]:
        """Run the specs; returns the results and the exit code (design.md §4). Reports are
        written for what finished however the run ends once checks have started."""
        specs = self.load(paths)
        plans = [self.plan(spec) for spec in specs]
        results = [
            AuditResult(audit=p.spec.name, spec=str(p.spec.path), seed=p.spec.model.seed,
                        device=str(p.device), environment=environment(p.device))
            for p in plans
        ]
        if not any(p.checks for p in plans):
            self.hook.robaudit_report(results=results, options=self.options)
            return results, EXIT_NO_CHECKS
        code = EXIT_OK
        with ExitStack() as stack:
            bases = [self.prepare(plan, stack) if plan.checks else None for plan in plans]
            try:
                for plan, base, result in zip(plans, bases, results, strict=True):
                    if base is None:
                        continue
                    started = time.perf_counter()
                    try:
                        if not self.run_plan(plan, base, result):
                            break
                    finally:
                        result.duration_s = time.perf_counter() - started
            except KeyboardInterrupt:
                for result in results:
                    result.interrupted = True
                code = EXIT_INTERRUPTED
            finally:
                self.hook.robaudit_report(results=results, options=self.options)
        if code == EXIT_OK and any(c.outcome in ("failed", "error")
                                   for r in results for c in r.checks):
            code = EXIT_FAILED
        return results, code
