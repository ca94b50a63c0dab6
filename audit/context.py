"""``AuditContext``: everything a metric receives besides its params."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from robaudit.errors import UsageError
from robaudit.lazydata import Inputs, LazyInputs, unit_inputs
from robaudit.metric import Unit, work_units
from robaudit.model import ModelUnderAudit

if TYPE_CHECKING:
    from robaudit.diskcache import DiskStore

T = TypeVar("T")


@dataclass(frozen=True)
class DataSplit:
    """One split of the audit data, on the CPU: ``x`` is N×C×H×W (or N×D), a tensor or inputs
    read on demand (:class:`robaudit.lazydata.LazyInputs`, design §8: indexed, sliced and
    shaped as a tensor, never held whole); ``y`` is N labels."""

    x: Inputs
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    @property
    def lazy(self) -> bool:
        """Whether the inputs are read on demand rather than held."""
        return isinstance(self.x, LazyInputs)

    def subset(self, keep: torch.Tensor) -> DataSplit:
        """The samples at the positions ``keep`` (a LongTensor): a copy of a tensor's rows, a
        new index map of lazy inputs (nothing decoded)."""
        x = self.x.subset(keep) if isinstance(self.x, LazyInputs) else self.x[keep]
        return DataSplit(x, self.y[keep])

    def chunks(self, bounds: list[tuple[int, int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` of each ``(start, stop)`` range, in the order given, on the CPU: lazy
        inputs are read through their DataLoader (:meth:`LazyInputs.units`)."""
        for (start, stop), x in zip(bounds, unit_inputs(self.x, bounds), strict=True):
            yield x, self.y[start:stop]


class ProgressTask(Protocol):
    """A progress handle: ``advance`` by the units of work done."""

    def advance(self, amount: float = 1) -> None: ...


class ProgressFactory(Protocol):
    """Starts a progress task of ``total`` units with a description."""

    def __call__(self, total: float, description: str) -> ProgressTask: ...


class _SilentTask:
    def advance(self, amount: float = 1) -> None:
        return None


def silent_progress(total: float, description: str) -> ProgressTask:
    """The progress factory used when nothing displays progress (``-q``, a pipe, a test)."""
    return _SilentTask()


#: how often :class:`KeepAlive` tells the running progress task that the work goes on (s)
KEEPALIVE_S = 1.0


class KeepAlive:
    """A progress factory around a reporter's, for steps that advance rarely: one work unit
    that runs for minutes (``sphere_deformation`` on large images is one unit of 50 spheres),
    a solver between two iterations. A daemon thread advances the task used last by 0 every
    ``period`` seconds, so that the reporter's heartbeat (rate limited by the reporter) goes
    on between two real advances. A task that reached its total is done and no longer shown
    (the task used before it is, e.g. the units task around a task started inside a unit with
    ``ctx.progress``); the runner calls :meth:`forget` when a check starts, so a check's task is
    never shown for the next one."""

    def __init__(self, inner: ProgressFactory, period: float = KEEPALIVE_S) -> None:
        self.inner, self.period = inner, period
        self._lock = threading.Lock()
        self._live: list[_KeptTask] = []  # the unfinished tasks, the one used last at the end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, total: float, description: str) -> ProgressTask:
        task = _KeptTask(self, self.inner(total, description), total)
        with self._lock:
            self._live.append(task)
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, daemon=True,
                                            name="robaudit-keepalive")
            self._thread.start()
        return task

    def advance(self, task: _KeptTask, amount: float) -> None:
        """Advance ``task`` (from the metric's thread): it becomes the task used last, or
        leaves the live tasks when it reaches its total."""
        with self._lock:
            task.done += amount
            task.task.advance(amount)
            if task in self._live:
                self._live.remove(task)
            if task.done < task.total:
                self._live.append(task)

    def forget(self) -> None:
        """A new check starts: no task is running until it starts one."""
        with self._lock:
            self._live.clear()

    def close(self) -> None:
        """Stop the thread (the run is over)."""
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock, suppress(Exception):  # a display that fails stops nothing
                if self._live:
                    self._live[-1].task.advance(0)


class _KeptTask:
    def __init__(self, keeper: KeepAlive, task: ProgressTask, total: float) -> None:
        self.keeper, self.task, self.total = keeper, task, total
        self.done = 0.0

    def advance(self, amount: float = 1) -> None:
        self.keeper.advance(self, amount)


#: The bytes of recomputable entries (:meth:`RunCache.get_or_compute` with ``bounded``) that a
#: run keeps in memory by default: DeepFool's per-unit results, three inputs' size a sample.
MEMORY_BUDGET = 2**30


class RunCache:
    """A per-run cache that checks share, so that expensive common work is done once.

    Keys should name the work and every input it depends on, e.g.
    ``("features", model.name, split)`` or ``("deepfool", model.name, split, overshoot)``.

    Memory (design §8): an entry stored with ``bounded=True`` is work that grows with the
    split times the input size but is deterministic, so that computing it again gives the same
    numbers (DeepFool on a work unit). Such entries are kept while their tensors fit
    ``budget`` bytes together (default :data:`MEMORY_BUDGET`); one that does not fit is
    returned without being kept, and computed again (or read from the disk cache) when it is
    asked for next. A full cache keeps what it holds rather than evicting the least recently
    used entry: the consumers sweep the units of a split in order, and LRU would evict each
    unit just before the next sweep asks for it, where keeping the first ones makes every
    later sweep find them. Other entries (features, logits, fits) are always kept.
    """

    def __init__(self, disk: DiskStore | None = None, budget: int = MEMORY_BUDGET) -> None:
        self._store: dict[Any, Any] = {}
        self._bounded: dict[Any, int] = {}  # the bounded entries' keys and bytes
        #: the bytes that bounded entries may hold together
        self.budget = budget
        #: the cache between runs (``--cache-dir``), consulted on a miss here
        self.disk = disk

    @property
    def held(self) -> int:
        """The bytes that bounded entries hold now."""
        return sum(self._bounded.values())

    def get_or_compute(self, key: Any, compute: Callable[[], T], *, bounded: bool = False
                       ) -> T:
        """The value of ``key``: from this run, else from the disk cache, else computed (and
        stored on the disk). ``bounded``: keep it in memory only within :attr:`budget` (see
        the class docstring)."""
        if key in self._store:
            return self._store[key]
        found, value = self.disk.load(key) if self.disk else (False, None)
        if not found:
            value = compute()
            if self.disk:
                self.disk.save(key, value)
        if not bounded:
            self._store[key] = value
        elif (size := tensor_bytes(value)) + self.held <= self.budget:
            self._store[key], self._bounded[key] = value, size
        return value

    def get(self, key: Any) -> Any:
        """The value computed for ``key`` in this run, else None (the disk is not read)."""
        return self._store.get(key)

    def take(self, key: Any) -> Any:
        """:meth:`get`, and forget the value in memory: for the parts of a whole that the
        caller caches next, so that they are not held twice."""
        self._bounded.pop(key, None)
        return self._store.pop(key, None)

    def __contains__(self, key: Any) -> bool:
        return key in self._store


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in ``value`` (a tensor, a dataclass, or a list, tuple or dict
    of them); other values count 0."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.numel()
    if is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


@dataclass
class AuditContext:
    """What :meth:`Metric.compute` receives.

    model       the audited model (in eval mode, parameters frozen, on ``device``).
    models      every model of the spec by name (``model`` is under its own name too).
    splits      the data splits on the CPU; use :meth:`batches` to iterate on the device.
    split       the name of the split the checks run on; ``reference`` the training-like one.
    seed        the check's seed, derived from the spec seed and the check id.
    generator   a CPU ``torch.Generator`` seeded with ``seed``: draw random numbers from it
                (then move them) so results do not depend on the device.
    run_seed    the spec's seed itself: seed work that several checks share through ``cache``
                (e.g. a universal perturbation) from it, so it is the same for each of them.
    progress    starts a progress task; cheap when nothing is displayed; usable anywhere in
                a check, inside a work unit too (a long unit's steps then show in the log).
    cache       the per-run :class:`RunCache`.
    """

    model: ModelUnderAudit
    splits: dict[str, DataSplit]
    split: str
    reference: str
    batch_size: int
    device: torch.device
    seed: int
    generator: torch.Generator
    run_seed: int = 0
    models: dict[str, ModelUnderAudit] = field(default_factory=dict)
    progress: ProgressFactory = silent_progress
    cache: RunCache = field(default_factory=RunCache)

    def data(self, split: str | None = None) -> DataSplit:
        """The named split (default: the audit split), on the CPU."""
        name = split or self.split
        if name not in self.splits:
            raise UsageError(
                f"data split {name!r} does not exist; available: {', '.join(sorted(self.splits))}"
            )
        return self.splits[name]

    def batches(
        self, split: str | None = None, batch_size: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` batches of a split, moved to the audit device."""
        data = self.data(split)
        size = batch_size or self.batch_size
        bounds = [(start, min(start + size, len(data))) for start in range(0, len(data), size)]
        for x, y in data.chunks(bounds):
            yield x.to(self.device), y.to(self.device)

    def features(self, split: str | None = None, model: ModelUnderAudit | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features g(x) and logits of a whole split, from one forward pass (cached per run,
        kept on the CPU: move what you take to ``device``). Raises MetricError for a model
        without g(x)."""
        mua = model or self.model
        name = split or self.split
        mua.feature_site()

        key = ("features", mua.name, name)

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            done = self._units_done(key, name)  # from unit_features
            fresh = self._unit_inputs(name, done)
            feats, logits = [], []
            for _, part in done:
                f, z = part if part is not None else self._features_of(mua, next(fresh))
                feats.append(f)
                logits.append(z)
            return torch.cat(feats), torch.cat(logits)

        return self.cache.get_or_compute(key, compute)

    def logits(self, split: str | None = None, model: ModelUnderAudit | None = None
               ) -> torch.Tensor:
        """Logits of a whole split (cached per run, on the CPU): shared with
        :meth:`features` when the model has g(x), so the split takes one forward pass."""
        mua = model or self.model
        name = split or self.split
        if mua.has_features:
            return self.features(name, mua)[1]

        key = ("logits", mua.name, name)

        def compute() -> torch.Tensor:
            done = self._units_done(key, name)  # from unit_logits
            fresh = self._unit_inputs(name, done)
            return torch.cat([part if part is not None else self._logits_of(mua, next(fresh))
                              for _, part in done])

        return self.cache.get_or_compute(key, compute)

    def unit_batch(self, unit: Unit, split: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of a work unit (design §8), on the audit device."""
        data = self.data(split)
        return (data.x[unit.indices].to(self.device), data.y[unit.indices].to(self.device))

    def unit_features(self, unit: Unit, model: ModelUnderAudit | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of a unit of the audit split (on the CPU): a slice of
        :meth:`features` when the run has it, else one forward pass of the unit, cached (and
        handed over to :meth:`features`, which caches it as part of the split's); the same
        numbers either way (a unit is one of the batches :meth:`features` runs)."""
        mua = model or self.model
        key = ("features", mua.name, self.split)
        if key in self.cache:
            feats, logits = self.features(self.split, mua)
            return feats[unit.indices], logits[unit.indices]
        mua.feature_site()
        return self.cache.get_or_compute(
            (*key, unit.start, unit.stop),
            lambda: self._features_of(mua, self.unit_batch(unit, self.split)[0]))

    def unit_logits(self, unit: Unit, model: ModelUnderAudit | None = None) -> torch.Tensor:
        """Logits of a unit of the audit split (on the CPU), as :meth:`unit_features`."""
        mua = model or self.model
        if mua.has_features:
            return self.unit_features(unit, mua)[1]
        key = ("logits", mua.name, self.split)
        if key in self.cache:
            return self.logits(self.split, mua)[unit.indices]
        return self.cache.get_or_compute(
            (*key, unit.start, unit.stop),
            lambda: self._logits_of(mua, self.unit_batch(unit, self.split)[0]))

    def _units_done(self, key: tuple[Any, ...], split: str) -> list[tuple[Unit, Any]]:
        """Every work unit of ``split`` with what :meth:`unit_features` or
        :meth:`unit_logits` computed of it under ``key`` (taken from the cache), else None."""
        return [(unit, self.cache.take((*key, unit.start, unit.stop)))
                for unit in work_units(len(self.data(split)), self.batch_size)]

    def _unit_inputs(self, split: str, done: list[tuple[Unit, Any]]) -> Iterator[torch.Tensor]:
        """The inputs of the units not yet computed, in order, on the audit device (a lazy
        split's through its DataLoader)."""
        todo = [(unit.start, unit.stop) for unit, part in done if part is None]
        return (x.to(self.device) for x, _ in self.data(split).chunks(todo))

    @staticmethod
    def _features_of(mua: ModelUnderAudit, x: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass of a batch: features and logits, on the CPU."""
        with torch.no_grad():
            f, z = mua.features_and_logits(x)
        return f.cpu(), z.cpu()

    @staticmethod
    def _logits_of(mua: ModelUnderAudit, x: torch.Tensor) -> torch.Tensor:
        """One forward pass of a batch: logits, on the CPU."""
        with torch.no_grad():
            return mua.logits(x).cpu()

    @property
    def reference_is_split(self) -> bool:
        """Whether the reference is the audit split itself (a source without a separate
        reference split): a figure fitted on the reference is then not held out."""
        return self.data(self.reference) is self.data(self.split)

    def model_named(self, name: str) -> ModelUnderAudit:
        """A model of the spec's ``models`` mapping (or the audited one by its name)."""
        if name not in self.models:
            raise UsageError(
                f"no model named {name!r}; the spec defines: {', '.join(sorted(self.models))}"
            )
        return self.models[name]
