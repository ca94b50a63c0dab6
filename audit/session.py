"""The runner: validate every spec, select checks, set up models and data, run, report."""

from __future__ import annotations

import argparse
import hashlib
import platform
import reprlib
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

import robaudit
from robaudit import lastrun
from robaudit.baseline import Baseline, Delta, NotComparable, compare_values, load_baseline
from robaudit.cachekey import model_salt, run_salt
from robaudit.context import (
    AuditContext,
    DataSplit,
    KeepAlive,
    ProgressFactory,
    RunCache,
    silent_progress,
)
from robaudit.datafit import input_problems, model_problems, non_finite_outputs
from robaudit.diskcache import DiskStore, warn_on_console
from robaudit.distributed import POLL_S, PeerFailure, World
from robaudit.errors import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKS,
    EXIT_OK,
    MetricError,
    ParamError,
    SpecError,
    UsageError,
)
from robaudit.gate import VerdictError, verdict
from robaudit.guard import (
    CheckTimeout,
    Terminated,
    deadline,
    shielded,
    terminate_as_interrupt,
)
from robaudit.identity import data_fingerprint, model_identity
from robaudit.metric import Floor, MetricResult, SampleMetric, on_cpu
from robaudit.model import ModelUnderAudit
from robaudit.ops.stats import mean_interval
from robaudit.pluginmanager import Plugins
from robaudit.results import AuditResult, CheckResult, Outcome
from robaudit.selection import keyword_matches, marker_matches
from robaudit.sharding import (
    Failure,
    Inbox,
    Share,
    reduce_shares,
    run_units,
    sendable,
    shard_placeholder,
    shard_record,
    task_groups,
)
from robaudit.spec import AuditSpec, Check, ModelSpec, load_spec
from robaudit.threads import default_threads, model_macs, thread_setting

T = TypeVar("T")


@dataclass
class AuditPlan:
    """One spec about to run: the selected checks and where they run.

    data_summary        the number of samples of each split, after the limits.
    reference_is_split  the data source has no separate reference split, so the reference is
                        the audit split itself (a "held-out" figure is then not held out).
    blocked             check id → why it cannot run (its ``check_data`` raised, or the model's
                        outputs on the data are not finite): it is reported as ``error``.
    model_identity      what was audited (JSON ``model``) and ``data_identity`` on what (JSON
                        ``data``, with the audited tensors' fingerprint); set by ``prepare``.
    threads             torch's CPU threads for this spec (``--threads``, else
                        :func:`robaudit.threads.default_threads` for its model).
    processes           how the run's processes share the work ("" for one process).
    warnings            what the run warns of about its set-up (a factory without weights),
                        also written into ``model_identity`` (JSON ``model.warnings``).
    """

    spec: AuditSpec
    checks: list[Check]
    deselected: int
    device: torch.device
    data_summary: dict[str, int] = field(default_factory=dict)
    reference_is_split: bool = False
    blocked: dict[str, str] = field(default_factory=dict)
    model_identity: dict[str, Any] = field(default_factory=dict)
    data_identity: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    #: how the run's processes share the work (design §8): "" for one process
    processes: str = ""
    warnings: list[str] = field(default_factory=list)
    #: what ``--lf`` / ``--ff`` did to the selection (:func:`robaudit.lastrun.select`)
    rerun: str = ""


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


def seeded_subset(split: DataSplit, limit: int | None, seed: int) -> DataSplit:
    """At most ``limit`` samples of ``split``: a subset drawn with ``seed``, in index order."""
    if limit is None or limit >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    keep = keep[:limit].sort().values
    return DataSplit(split.x[keep], split.y[keep])


def within(bounds: tuple[float, float] | None, low: float, high: float) -> tuple[float, float]:
    """An interval intersected with the range the metric's value can take."""
    if bounds is None:
        return (low, high)
    return (min(max(low, bounds[0]), bounds[1]), max(min(high, bounds[1]), bounds[0]))


def result_or_failure(check: Check, computed: object) -> MetricResult | Failure:
    """What a metric returned, checked before it is judged or sent: a :class:`MetricResult`
    (or the :class:`Failure` of computing it); anything else, such as a bare float, is the
    check's error, so that the check is reported rather than lost."""
    if isinstance(computed, (MetricResult, Failure)):
        return computed
    return Failure(f"{check.metric.name} returned {type(computed).__name__} "
                   f"({reprlib.repr(computed)}), not a MetricResult")


def environment(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "device_name": name,
            "threads": thread_setting(torch.get_num_threads())}


class Session:
    """Runs specs with the loaded plugins and the parsed command-line options."""

    def __init__(self, plugins: Plugins, options: argparse.Namespace,
                 world: World | None = None) -> None:
        self.plugins = plugins
        self.options = options
        #: this process among the run's processes (design §8)
        self.world = world or World()
        self.hook = plugins.hook
        self.maxfail: int = getattr(options, "maxfail", 0) or 0
        self.failures = 0
        #: ``--strict``: a ``warned`` check counts as failed
        self.strict: bool = bool(getattr(options, "strict", False))
        baseline = getattr(options, "baseline", None)
        self.baseline: Baseline | None = load_baseline(baseline) if baseline else None
        #: what plugins raised in reporting hooks; the run goes on, the exit code says so
        self.hook_failures: list[str] = []
        #: in a process group: the running plan's inbox, result, run seed and data fingerprint
        self.inbox: tuple[Inbox, AuditResult, int, str | None] | None = None
        #: how many plans have started in a process group (names each plan's posts)
        self.plans_started = 0
        #: the progress displays of the prepared plans (their threads end with the run)
        self.keepalives: list[KeepAlive] = []
        #: how a warning about the run's set-up is shown (the pytest plugin: a pytest warning)
        self.warn: Callable[[str], None] = warn_on_console

    def counts_as_failure(self, outcome: Outcome) -> bool:
        """``failed`` and ``error``, and ``warned`` under ``--strict``."""
        return outcome in ("failed", "error") or (self.strict and outcome == "warned")

    def notify(self, name: str, **kwargs: Any) -> None:
        """Call every implementation of hook ``name`` on its own, in pluggy's order, so that one
        plugin that raises (a reporter that cannot write, a console that chokes on odd details)
        never stops the others; each failure is recorded in :attr:`hook_failures`. Only the
        process that reports (rank 0, or a shard) calls them."""
        if not self.world.reports:
            return
        for impl in reversed(getattr(self.hook, name).get_hookimpls()):
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except UsageError as exc:
                self.hook_failures.append(str(exc))
            except (Exception, SystemExit) as exc:
                self.hook_failures.append(f"plugin {impl.plugin_name!r} failed in {name}: "
                                          f"{type(exc).__name__}: {exc}")

    def write_reports(self, results: list[AuditResult]) -> None:
        """Every reporter, with SIGINT and SIGTERM held back until they are done."""
        with shielded():
            self.notify("robaudit_report", results=results, options=self.options)

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
        try:
            device = resolve_device(spec.model.device)
        except UsageError as exc:
            raise UsageError(spec.locate(("device",), str(exc))) from None
        if self.world.grouped and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.world.local_rank % torch.cuda.device_count())
        return AuditPlan(spec, selected, len(spec.checks) - len(selected), device,
                         processes=self.world.describe())

    # -- set-up ----------------------------------------------------------------------------
    def build_model(self, plan: AuditPlan, key: str, entry: ModelSpec) -> ModelUnderAudit:
        """Load one model entry. torch's global generator is seeded from the spec's seed and
        the entry's name first, so that a factory without weights (random initialisation) is
        the same model on every run of the spec."""
        torch.manual_seed(check_seed(plan.spec.model.seed, f"model:{key}"))
        try:
            module = self.hook.robaudit_load_model(
                config=entry.model_dump(), base_dir=plan.spec.base_dir
            )
            if module is None:
                raise UsageError("no plugin could load this model entry")
            normalize = (entry.normalize.mean, entry.normalize.std) if entry.normalize else None
            if entry.factory is not None and entry.weights is None:
                plan.warnings.append(f"{plan.spec.path}: {key}: factory {entry.factory} has no "
                                     "`weights`: unless it loads trained weights itself, this "
                                     "audits its random initialisation")
                self.warn(plan.warnings[-1])
            return ModelUnderAudit(module, input_range=entry.input_range, normalize=normalize,
                                   features=entry.features, device=plan.device, name=key)
        except UsageError as exc:
            raise UsageError(f"{plan.spec.path}: {key}.{exc}") from None
        except SystemExit as exc:
            raise UsageError(f"{plan.spec.path}: {key}: loading the model called "
                             f"sys.exit({exc.code!r})") from None

    def load_data(self, plan: AuditPlan) -> dict[str, DataSplit]:
        spec = plan.spec
        data = spec.model.data
        source = self.plugins.data_sources[data.source]
        try:
            splits = source.load(spec.source_options, spec.base_dir, spec.model.seed)
        except UsageError as exc:
            raise UsageError(f"{spec.path}: {exc}") from None
        except (Exception, SystemExit) as exc:  # e.g. a size that cannot be allocated
            raise UsageError(spec.locate(("data",), f"the {data.source!r} source could not load "
                                                    f"the data: {type(exc).__name__}: {exc}")
                             ) from None
        for key in ("split", "reference"):
            name = getattr(data, key)
            explicit = key == "split" or key in data.model_fields_set
            if name not in splits and explicit:
                raise UsageError(
                    f"{spec.path}: data.{key}: split {name!r} does not exist in "
                    f"{data.source!r}; available: {', '.join(sorted(splits))}"
                )
        splits[data.split] = seeded_subset(splits[data.split], data.limit, spec.model.seed)
        if data.reference not in splits:  # a single-split source: the reference is the split
            splits[data.reference] = splits[data.split]
            plan.reference_is_split = True
        elif data.reference != data.split:
            splits[data.reference] = seeded_subset(splits[data.reference], data.reference_limit,
                                                   spec.model.seed)
        if data.ood is not None:
            splits["ood"] = self.load_ood(plan, splits)
        plan.data_summary = {name: len(split) for name, split in splits.items()}
        return splits

    def load_ood(self, plan: AuditPlan, splits: dict[str, DataSplit]) -> DataSplit:
        """``data.ood``: a split of the same source, or a split of a second source (its own
        options, ``split`` defaulting to ``data.split``, an optional ``limit``)."""
        spec, data = plan.spec, plan.spec.model.data
        if isinstance(data.ood, str):
            if data.ood not in splits:
                raise UsageError(spec.locate(("data", "ood"), (
                    f"split {data.ood!r} does not exist in {data.source!r}; available: "
                    f"{', '.join(sorted(splits))}")))
            return seeded_subset(splits[data.ood], data.limit, spec.model.seed)
        ood = data.ood or {}
        try:
            loaded = self.plugins.data_sources[ood["source"]].load(
                spec.ood_options, spec.base_dir, spec.model.seed)
        except UsageError as exc:
            raise UsageError(spec.locate(("data", "ood"), str(exc))) from None
        name = ood.get("split", data.split)
        if name not in loaded:
            raise UsageError(spec.locate(("data", "ood", "split"), (
                f"split {name!r} does not exist in {ood['source']!r}; available: "
                f"{', '.join(sorted(loaded))}")))
        return seeded_subset(loaded[name], ood.get("limit"), spec.model.seed)

    def check_data_fits(self, plan: AuditPlan, models: dict[str, ModelUnderAudit],
                        splits: dict[str, DataSplit]) -> None:
        """Design §3: the data must fit every model; each misfit a located usage error."""
        spec = plan.spec
        used = list(dict.fromkeys((spec.model.data.split, spec.model.data.reference)))
        used += ["ood"] if "ood" in splits else []
        problems = input_problems(splits, used, spec.model.data.batch_size, spec.locate)
        if not problems:
            entries = {("model",): spec.model.model,
                       **{("models", name): e for name, e in spec.model.models.items()}}
            for (key, entry), mua in zip(entries.items(), models.values(), strict=True):
                channels = len(entry.normalize.mean) if entry.normalize else None
                problems += model_problems(key, mua, channels, splits, used, spec.locate)
        if problems:
            raise SpecError(problems)

    # -- running ---------------------------------------------------------------------------
    def check_context(self, check: Check, base: AuditContext) -> AuditContext:
        """The context of one check: the run's, with the check's own seed and generator; the
        previous check's progress task is forgotten."""
        if isinstance(base.progress, KeepAlive):
            base.progress.forget()
        seed = check_seed(base.seed, check.id)
        torch.manual_seed(seed)
        return AuditContext(
            model=base.model, splits=base.splits, split=base.split, reference=base.reference,
            batch_size=base.batch_size, device=base.device, seed=seed,
            generator=torch.Generator().manual_seed(seed), run_seed=base.run_seed,
            models=base.models, progress=base.progress, cache=base.cache,
        )

    def timeout_of(self, check: Check) -> float | None:
        """The check's own ``timeout``, else ``--timeout``, else none."""
        return check.timeout or getattr(self.options, "timeout", None)

    def run_check(self, check: Check, ctx: AuditContext, blocked: str | None = None,
                  fingerprint: str | None = None) -> CheckResult:
        """Compute one check and judge it (:func:`robaudit.gate.verdict`). A metric that raises
        (``SystemExit`` included) or runs past its timeout makes it ``error``; so does a
        ``blocked`` reason found before. ``fingerprint`` (of the audited data) pairs the check
        with its ``--baseline`` sample by sample."""
        start = time.perf_counter()
        if blocked is not None:
            return self.judge(check, Failure(blocked), 0.0, ctx.run_seed, fingerprint)
        outcome = self.guarded(check, lambda: check.metric.compute(ctx, check.params))
        return self.judge(check, outcome, time.perf_counter() - start, ctx.run_seed,
                          fingerprint)

    def guarded(self, check: Check, work: Callable[[], T]) -> T | Failure:
        """``work()`` under the check's timeout; what it raises as a :class:`Failure`."""
        try:
            with deadline(self.timeout_of(check)):
                return work()
        except (MetricError, UsageError, CheckTimeout) as exc:
            return Failure(str(exc))
        except SystemExit as exc:
            return Failure(f"the metric called sys.exit({exc.code!r})", traceback.format_exc())
        except Exception as exc:  # a broken metric must not stop the other checks
            return Failure(f"{type(exc).__name__}: {exc}", traceback.format_exc())

    def judge(self, check: Check, computed: MetricResult | Failure, duration: float,
              seed: int, fingerprint: str | None) -> CheckResult:
        """A check's result from what its metric computed: its interval, its baseline delta
        and the verdict on them (or ``error`` for a :class:`Failure`)."""
        params = check.params.model_dump(mode="json")
        common = {"id": check.id, "metric": check.metric.name, "expect": check.expect,
                  "params": params, "tags": check.tags,
                  "higher_is_better": check.metric.higher_is_better}
        computed = result_or_failure(check, computed)
        if isinstance(computed, Failure):
            return CheckResult(outcome="error", value=None, ci=None, details={},
                               message=computed.message, duration_s=duration,
                               traceback=computed.traceback, **common)
        try:
            value = float(computed.value)
        except (TypeError, ValueError) as exc:
            return self.judge(check, Failure(f"the metric returned a value that is not a "
                                             f"number: {exc}"), duration, seed, fingerprint)
        samples = None if computed.samples is None else np.asarray(computed.samples,
                                                                    dtype=float)
        ci = computed.ci if computed.ci is not None else (
            mean_interval(samples) if samples is not None else None)
        ci = None if ci is None else within(check.metric.value_range, float(ci[0]), float(ci[1]))
        sample_list = None if samples is None else samples.tolist()
        baseline = self.baseline_delta(check, seed, value, sample_list, params, fingerprint)
        outcome: Outcome
        if not np.isfinite(value):
            outcome, message = "error", f"the metric returned a non-finite value ({value})"
        elif "regression" in check.expect and baseline[0] and "missing" in baseline[0]:
            outcome, message = "error", baseline[0]["missing"]
        else:
            try:
                outcome, message = verdict(value, ci, check.expect, baseline[1],
                                           baseline_given=self.baseline is not None)
            except VerdictError as exc:
                outcome, message = "error", str(exc)
        return CheckResult(
            outcome=outcome, value=value if np.isfinite(value) else None, ci=ci,
            details=computed.details, message=message, duration_s=duration,
            samples=None if sample_list is None else tuple(sample_list),
            figures=tuple(computed.figures), baseline=baseline[0], **common,
        )

    def baseline_delta(self, check: Check, seed: int, value: float,
                       samples: list[float] | None, params: dict[str, Any],
                       fingerprint: str | None) -> tuple[dict[str, Any] | None, Delta | None]:
        """With ``--baseline``: the report's ``baseline`` object of this check and its
        :class:`Delta`; (None, None) without a baseline. Without a usable baseline check (none,
        no value, or values that cannot be compared: :class:`NotComparable`) the object holds
        why under ``missing`` and there is no delta (a ``regression`` check is then
        ``error``)."""
        if self.baseline is None or not np.isfinite(value):
            return None, None
        old = self.baseline.checks.get(check.id)
        if old is None or old.get("value") is None:
            why = "has no check" if old is None else "has no value for the check"
            return {"missing": f"{self.baseline.path} {why} {check.id!r}"}, None
        try:
            delta = compare_values(
                float(old["value"]), old.get("samples"), value, samples,
                check.metric.higher_is_better, seed=seed, check_id=check.id,
                same_data=fingerprint is not None and fingerprint == self.baseline.fingerprint)
        except NotComparable as exc:
            return {"missing": f"{self.baseline.path} {check.id!r}: {exc}"}, None
        notes = self.baseline.notes_for(old, params, robaudit.__version__, fingerprint)
        return {"value": old["value"], "delta": delta.delta, "ci": delta.ci,
                "paired": delta.paired, "notes": list(notes)}, delta

    def check_params_against_data(self, plan: AuditPlan, base: AuditContext) -> None:
        """Every selected check's :meth:`Metric.check_data`, before any check runs. A
        ``ParamError`` is a located spec error; any other exception blocks that check alone,
        which is then reported as ``error``."""
        problems = []
        for check in plan.checks:
            try:
                check.metric.check_data(self.check_context(check, base), check.params)
            except ParamError as exc:
                problems.append(plan.spec.locate(("checks", check.index, "params", exc.key),
                                                 exc.message))
            except (Exception, SystemExit) as exc:
                plan.blocked[check.id] = (f"{check.metric.name}.check_data raised "
                                          f"{type(exc).__name__}: {exc}")
        if problems:
            raise SpecError(problems)

    def check_model_outputs(self, plan: AuditPlan, base: AuditContext) -> None:
        """Block every check that uses the model's outputs when they are not finite on the
        audit split, or when the model raises on it (one forward pass, the one the run caches
        for the checks); the checks that read only the weights still run."""
        users = [c for c in plan.checks if c.metric.uses_data and c.id not in plan.blocked]
        if users:
            try:
                problem = non_finite_outputs(base.model, base.logits())
            except (Exception, SystemExit) as exc:  # e.g. a model that fails on large batches
                problem = (f"the model raised on the audit split (batch_size "
                           f"{base.batch_size}): {type(exc).__name__}: {exc}")
            if problem is not None:
                plan.blocked.update(dict.fromkeys((c.id for c in users), problem))

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
        self.check_data_fits(plan, models, splits)
        plan.threads = getattr(self.options, "threads", None) or default_threads(model_macs(
            models["model"].network, splits[spec.model.data.split].x[:1].to(plan.device)))
        seed = spec.model.seed
        base = AuditContext(
            model=models["model"], splits=splits, split=spec.model.data.split,
            reference=spec.model.data.reference, batch_size=spec.model.data.batch_size,
            device=plan.device, seed=seed, generator=torch.Generator().manual_seed(seed),
            run_seed=seed, models=models, cache=RunCache(self.disk_store(plan, models, splits)),
            progress=self.progress(),
        )
        self.check_params_against_data(plan, base)
        self.check_model_outputs(plan, base)
        plan.model_identity = model_identity(spec.model.model, spec.base_dir,
                                             models["model"].module)
        if plan.warnings:
            plan.model_identity["warnings"] = list(plan.warnings)
        data = spec.model.data
        plan.data_identity = {"source": data.source, "split": data.split,
                              "reference": data.reference, "sizes": dict(plan.data_summary),
                              "reference_is_split": plan.reference_is_split,
                              "fingerprint": data_fingerprint(splits[data.split])}
        return base

    def progress(self) -> ProgressFactory:
        """The reporters' progress display, kept alive between a long step's advances
        (:class:`robaudit.context.KeepAlive`), or nothing when none displays progress."""
        shown = self.hook.robaudit_progress(options=self.options)
        if shown is None:
            return silent_progress
        self.keepalives.append(KeepAlive(shown))
        return self.keepalives[-1]

    def disk_store(self, plan: AuditPlan, models: dict[str, ModelUnderAudit],
                   splits: dict[str, DataSplit]) -> DiskStore | None:
        """The cache between runs of ``--cache-dir``, salted with this plan's model entries
        (their files and code), data, device, seed and versions (see :mod:`robaudit.cachekey`)."""
        folder = getattr(self.options, "cache_dir", None)
        if not folder:
            return None
        spec = plan.spec
        entries = {"model": spec.model.model, **spec.model.models}
        salts = {name: model_salt(entries[name].model_dump(mode="json"), spec.base_dir,
                                  mua.network, skip=Path(folder).resolve())
                 for name, mua in models.items()}
        salt = run_salt(salts, spec.model.data.model_dump(mode="json"), splits,
                        plan.device, spec.model.seed)
        return DiskStore(Path(folder), salt, plan.device)

    def run_plan(self, plan: AuditPlan, base: AuditContext, result: AuditResult) -> bool:
        """Run a plan's checks into ``result``; False when ``--maxfail`` stopped the session."""
        torch.set_num_threads(plan.threads)
        result.model, result.data = plan.model_identity, plan.data_identity
        result.environment["threads"] = thread_setting(plan.threads)
        self.notify("robaudit_audit_start", plan=plan)
        if self.world.size > 1:
            return self.run_shares(plan, base, result)
        fingerprint = plan.data_identity.get("fingerprint")
        for check in plan.checks:
            check_result = self.run_check(check, self.check_context(check, base),
                                          plan.blocked.get(check.id), fingerprint)
            if not self.record(result, check_result):
                return False
        return True

    def record(self, result: AuditResult, check_result: CheckResult) -> bool:
        """Add a finished check to ``result`` and tell the reporters; False when
        ``--maxfail`` stops the session."""
        result.checks.append(check_result)
        self.notify("robaudit_check_finished", result=check_result)
        if self.counts_as_failure(check_result.outcome):
            self.failures += 1
            if self.maxfail and self.failures >= self.maxfail:
                return False
        return True

    # -- several processes (design §8) ---------------------------------------------------------
    def run_shares(self, plan: AuditPlan, base: AuditContext, result: AuditResult) -> bool:
        """This process's share of every check, in three phases: (1) the whole checks and
        the fits of the sample metrics (:func:`robaudit.sharding.task_groups`): in a process
        group each process takes the next task as it becomes free (a ticket counter in the
        rendezvous store), so that they run in parallel and balance; a ``--shard`` runs the
        whole checks of the tasks k ≡ I (mod N) and fits every sample metric itself;
        (2) every fit sent to every process; (3) this process's units of each sample metric.
        In a group each process posts its share of a check as soon as it is done
        (:class:`robaudit.sharding.Inbox`) and rank 0 judges each check once every share of it
        has arrived, so that a run cut short still reports every check that finished; the
        report lists the checks in plan order. A ``--shard`` keeps its shares for
        ``robaudit merge``."""
        world = self.world
        todo = [check for check in plan.checks if check.id not in plan.blocked]
        shares = {check.id: Share() for check in todo}
        tasks = task_groups(todo)
        fits: dict[str, Any] = {}
        inbox = Inbox(world, str(self.plans_started), plan.checks)
        if world.grouped:
            self.inbox = (inbox, result, base.run_seed, plan.data_identity.get("fingerprint"))
            self.plans_started += 1
            for check in plan.checks:
                if check.id in plan.blocked and world.reports:
                    self.record(result, self.combine(check, [], plan.blocked[check.id],
                                                     base.run_seed, None))
            for index in world.claim(len(tasks)):
                for check in tasks[index]:
                    fits.update(self.owned_work(check, self.check_context(check, base),
                                                shares[check.id]))
                    if not isinstance(check.metric, SampleMetric):
                        inbox.post(check, shares[check.id])
                self.take_in()
            fits = {cid: fit for part in world.all_gather(fits) for cid, fit in part.items()}
        else:
            for index, task in enumerate(tasks):
                for check in task:
                    world.check()
                    if index % world.size == world.rank or isinstance(check.metric,
                                                                      SampleMetric):
                        fits.update(self.owned_work(check, self.check_context(check, base),
                                                    shares[check.id]))
        for check in todo:
            if isinstance(check.metric, SampleMetric):
                world.check()
                self.unit_work(check, self.check_context(check, base), fits[check.id],
                               shares[check.id])
                if world.grouped:
                    inbox.post(check, shares[check.id])
                    self.take_in()
        if world.sharded:
            selection = {"keyword": getattr(self.options, "keyword", None),
                         "markexpr": getattr(self.options, "markexpr", None)}
            encoded = {cid: sendable(share) for cid, share in shares.items()}
            result.shard = shard_record(plan, self.overrides(), world, encoded, selection)
            for check in plan.checks:
                if not self.record(result, shard_placeholder(check, shares.get(check.id),
                                                             plan.blocked.get(check.id), world)):
                    return False
            return True
        # every check is recorded: the other processes have run this plan's work, and they
        # go on to the next spec whatever --maxfail says (it does not stop them)
        while world.reports and len(result.checks) < len(plan.checks):
            world.check()
            time.sleep(POLL_S)
            self.take_in()
        self.inbox = None
        return True

    def take_in(self) -> None:
        """Rank 0: judge and record the checks of the running plan whose shares have all
        arrived (in plan order, so the report's order is the plan's)."""
        if self.inbox is None or not self.world.reports:
            return
        inbox, result, seed, fingerprint = self.inbox
        taken = {check.id for check in result.checks}
        for check, parts in inbox.ready(taken):
            self.record(result, self.combine(check, parts, None, seed, fingerprint))
        order = {check.id: i for i, check in enumerate(inbox.checks)}
        result.checks.sort(key=lambda c: order.get(c.id, -1))

    def owned_work(self, check: Check, ctx: AuditContext, share: Share) -> dict[str, Any]:
        """Phase 1 of :meth:`run_shares` for a check this process owns: a whole check is
        computed into ``share``; a sample metric is fitted (its tensors on the CPU), and the
        fit, or the :class:`Failure` of the fit, is returned to be sent to every process."""
        metric, params = check.metric, check.params
        start = time.perf_counter()
        try:
            if isinstance(metric, SampleMetric):
                return {check.id: self.guarded(check, lambda: on_cpu(metric.fit(ctx, params)))}
            computed = result_or_failure(
                check, self.guarded(check, lambda: metric.compute(ctx, params)))
            if isinstance(computed, Failure):
                share.error = computed
            else:
                share.result = computed
            return {}
        finally:
            share.duration_s += time.perf_counter() - start

    def unit_work(self, check: Check, ctx: AuditContext, fitted: Any, share: Share) -> None:
        """Phase 3 of :meth:`run_shares`: this process's units of a sample metric."""
        start = time.perf_counter()
        if isinstance(fitted, Failure):
            share.error = fitted
        else:
            metric: SampleMetric = check.metric  # type: ignore[assignment]
            done = self.guarded(check, lambda: run_units(metric, ctx, check.params, fitted,
                                                         self.world.rank, self.world.size))
            if isinstance(done, Failure):
                share.error = done
            else:
                share.units, share.unit_count = done.units, done.unit_count
                share.fit_digest, share.fit_summary = done.fit_digest, done.fit_summary
        share.duration_s += time.perf_counter() - start

    def combine(self, check: Check, shares: list[Share], blocked: str | None, seed: int,
                fingerprint: str | None) -> CheckResult:
        """Judge a check from the shares of every process (rank 0, or ``merge``)."""
        duration = max((share.duration_s for share in shares), default=0.0)
        errors = [share.error for share in shares if share.error is not None]
        computed: MetricResult | Failure
        if blocked is not None:
            computed = Failure(blocked)
        elif errors:
            computed = errors[0]
        elif isinstance(check.metric, SampleMetric):
            metric = check.metric
            computed = self.guarded(check, lambda: reduce_shares(metric, check.params, shares))
        else:
            whole = [share.result for share in shares if share.result is not None]
            computed = whole[0] if whole else Failure("no process ran this check")
        return self.judge(check, computed, duration, seed, fingerprint)

    def collect(self, paths: list[str]) -> list[tuple[AuditPlan, list[Floor | None]]]:
        """``--collect-only``: validate and prepare every spec (models built, data loaded and
        checked against them) and return each plan with the floor of each selected check;
        no check runs."""
        plans = [self.plan(spec) for spec in self.load(paths)]
        lastrun.select(plans, self.options, self.warn)
        collected = []
        with ExitStack() as stack:
            for plan in plans:
                floors: list[Floor | None] = []
                if plan.checks:
                    base = self.prepare(plan, stack)
                    floors = [c.metric.floor(self.check_context(c, base), c.params)
                              for c in plan.checks]
                collected.append((plan, floors))
        return collected

    def run(self, paths: list[str]) -> tuple[list[AuditResult], int]:
        """Run the specs; returns the results and the exit code (design.md §4). Reports are
        written for what finished however the run ends once checks have started; SIGTERM ends
        the run as Ctrl-C does. A reporter that failed makes the exit code 3 (unless the run
        was interrupted): the gate's record is incomplete."""
        specs = self.load(paths)
        plans = [self.plan(spec) for spec in specs]
        lastrun.select(plans, self.options, self.warn)
        results = [
            AuditResult(audit=p.spec.name, spec=str(p.spec.path), seed=p.spec.model.seed,
                        device=str(p.device),
                        environment={**environment(p.device), **self.world.environment()},
                        selected=len(p.checks), deselected=p.deselected)
            for p in plans
        ]
        if not any(p.checks for p in plans):
            self.write_reports(results)
            return results, EXIT_INTERNAL if self.hook_failures else EXIT_NO_CHECKS
        code = EXIT_OK
        with ExitStack() as stack:
            stack.enter_context(terminate_as_interrupt())
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
            except (KeyboardInterrupt, PeerFailure) as exc:
                if isinstance(exc, Terminated):  # a launcher stopping the group for a failure?
                    self.world.blame()
                with suppress(Exception):  # the checks that finished on other processes
                    self.take_in()
                stopped = self.world.failure or (exc.reason if isinstance(exc, Terminated)
                                                 else None)
                for result in results:
                    result.interrupted, result.stopped = True, stopped
                code = EXIT_INTERNAL if self.world.failure else EXIT_INTERRUPTED
            finally:
                for keepalive in self.keepalives:
                    keepalive.close()
                self.write_reports(results)
        return results, self.exit_code(results, code)

    def exit_code(self, results: list[AuditResult], code: int = EXIT_OK) -> int:
        """The exit code of finished ``results`` (design §4): ``code`` if the run was cut
        short, else 1 when a check counts as failed; 3 when a reporter failed."""
        if code == EXIT_OK and any(self.counts_as_failure(c.outcome)
                                   for r in results for c in r.checks):
            code = EXIT_FAILED
        if self.hook_failures and code != EXIT_INTERRUPTED:
            code = EXIT_INTERNAL
        return code
