"""Preparing a spec's run (design §3): the plan of one spec (:class:`AuditPlan`), each
check's seed, and :class:`Preparation`, the session's part that builds the models, loads the
data, checks that the data fit the models and the checks' params, and makes the context of
the run and of each check. Everything here that goes wrong is a usage or spec error, found
before any check runs."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robaudit.cachekey import model_salt, run_salt
from robaudit.context import (
    MEMORY_BUDGET,
    AuditContext,
    DataSplit,
    KeepAlive,
    ProgressFactory,
    RunCache,
    silent_progress,
)
from robaudit.datafit import input_problems, model_problems, non_finite_outputs
from robaudit.diskcache import DiskStore
from robaudit.errors import ParamError, SpecError, UsageError
from robaudit.identity import data_fingerprint, model_identity
from robaudit.inputsize import model_image_options
from robaudit.lazydata import LazyInputs
from robaudit.model import ModelUnderAudit
from robaudit.pluginmanager import Plugins
from robaudit.runsetup import memory_bytes
from robaudit.spec import AuditSpec, Check, ModelSpec
from robaudit.threads import default_threads, model_macs


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
    #: where an image folder's size came from when the spec gave none (the model's config)
    transform_from: str = ""


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
    """At most ``limit`` samples of ``split``: a subset drawn with ``seed``, in index order;
    of lazy inputs, chosen before anything is decoded (design §8)."""
    if limit is None or limit >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(keep[:limit].sort().values)


def with_workers(splits: dict[str, DataSplit], workers: int | None) -> dict[str, DataSplit]:
    """``data.workers`` given: the lazy splits read by that many DataLoader processes (the
    same split object where several names share one)."""
    if workers is None:
        return splits
    done: dict[int, DataSplit] = {}
    for split in splits.values():
        if id(split) not in done and isinstance(split.x, LazyInputs):
            done[id(split)] = DataSplit(split.x.with_workers(workers), split.y)
    return {name: done.get(id(split), split) for name, split in splits.items()}


def data_identity(plan: AuditPlan, splits: dict[str, DataSplit]) -> dict[str, Any]:
    """The JSON report's ``data``: source, split names and sizes, the audit split's
    fingerprint, and for lazy inputs how they are made (an image folder's transform, with
    where it came from) and what the fingerprint hashes."""
    data = plan.spec.model.data
    identity: dict[str, Any] = {
        "source": data.source, "split": data.split, "reference": data.reference,
        "sizes": dict(plan.data_summary), "reference_is_split": plan.reference_is_split,
        "fingerprint": data_fingerprint(splits[data.split], data.batch_size)}
    audited = splits[data.split].x
    if isinstance(audited, LazyInputs):
        identity.update(audited.describe())
        identity["workers"] = audited.workers
        if plan.transform_from:
            identity["transform_from"] = plan.transform_from
    return identity



class Preparation:
    """The set-up of :class:`robaudit.session.Session` (a base class of it): a plan's models,
    data and contexts."""

    plugins: Plugins
    options: argparse.Namespace
    hook: Any
    #: the progress displays of the prepared plans (their threads end with the run)
    keepalives: list[KeepAlive]
    #: how a warning about the run's set-up is shown (the pytest plugin: a pytest warning)
    warn: Callable[[str], None]

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
            elif (entry.torchvision or entry.timm) and entry.weights is None:
                kind, name = entry.source
                plan.warnings.append(f"{plan.spec.path}: {key}: {kind}: {name} has no `weights`: "
                                     "nothing is downloaded, so this audits its random "
                                     "initialisation; give a local checkpoint as `weights`")
                self.warn(plan.warnings[-1])
            return ModelUnderAudit(module, input_range=entry.input_range, normalize=normalize,
                                   features=entry.features, device=plan.device, name=key)
        except UsageError as exc:
            raise UsageError(f"{plan.spec.path}: {key}.{exc}") from None
        except SystemExit as exc:
            raise UsageError(f"{plan.spec.path}: {key}: loading the model called "
                             f"sys.exit({exc.code!r})") from None

    def source_options(self, plan: AuditPlan, model: ModelUnderAudit) -> Any:
        """The data source's options; for an image folder without ``size`` or ``image_size``,
        the input size that the model's source prescribes (:mod:`robaudit.inputsize`)."""
        spec = plan.spec
        options: Any = spec.source_options
        fields = type(options).model_fields
        if "image_size" not in fields or "size" not in fields \
                or options.size is not None or options.image_size is not None:
            return options
        try:
            found = model_image_options(spec.model.model, spec.base_dir, model.module)
        except UsageError as exc:
            raise UsageError(f"{spec.path}: {exc}") from None
        if found is None:
            return options
        settings, plan.transform_from = found
        return type(options).model_validate({**options.model_dump(), **settings})

    def load_data(self, plan: AuditPlan, model: ModelUnderAudit | None = None
                  ) -> dict[str, DataSplit]:
        spec = plan.spec
        data = spec.model.data
        source = self.plugins.data_sources[data.source]
        options = spec.source_options if model is None else self.source_options(plan, model)
        try:
            splits = source.load(options, spec.base_dir, spec.model.seed)
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
        return with_workers(splits, data.workers)

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
            except UsageError as exc:  # data that cannot be read (an unreadable image)
                raise UsageError(f"{plan.spec.path}: {exc}") from None
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
        splits = self.load_data(plan, models["model"])
        self.check_data_fits(plan, models, splits)
        plan.threads = getattr(self.options, "threads", None) or default_threads(model_macs(
            models["model"].network, splits[spec.model.data.split].x[:1].to(plan.device)))
        seed = spec.model.seed
        base = AuditContext(
            model=models["model"], splits=splits, split=spec.model.data.split,
            reference=spec.model.data.reference, batch_size=spec.model.data.batch_size,
            device=plan.device, seed=seed, generator=torch.Generator().manual_seed(seed),
            run_seed=seed, models=models, cache=self.run_cache(plan, models, splits),
            progress=self.progress(),
        )
        self.check_params_against_data(plan, base)
        self.check_model_outputs(plan, base)
        plan.model_identity = model_identity(spec.model.model, spec.base_dir,
                                             models["model"].module)
        if plan.warnings:
            plan.model_identity["warnings"] = list(plan.warnings)
        plan.data_identity = data_identity(plan, splits)
        return base

    def progress(self) -> ProgressFactory:
        """The reporters' progress display, kept alive between a long step's advances
        (:class:`robaudit.context.KeepAlive`), or nothing when none displays progress."""
        shown = self.hook.robaudit_progress(options=self.options)
        if shown is None:
            return silent_progress
        self.keepalives.append(KeepAlive(shown))
        return self.keepalives[-1]

    def run_cache(self, plan: AuditPlan, models: dict[str, ModelUnderAudit],
                  splits: dict[str, DataSplit]) -> RunCache:
        """The run's cache of shared work: bounded by ``--cache-memory`` (default
        :data:`robaudit.context.MEMORY_BUDGET`), backed by ``--cache-dir`` when given."""
        size = getattr(self.options, "cache_memory", None)
        budget = MEMORY_BUDGET if size is None else memory_bytes(size)
        return RunCache(self.disk_store(plan, models, splits), budget=budget)

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
