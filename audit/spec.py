"""The audit spec (design.md §3): YAML → validated, resolved :class:`AuditSpec`.

Validation happens in full before anything runs. Every problem is reported at once, each as
``FILE:LINE: key.path: what was expected``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from robaudit.datasource import SourceOptions
from robaudit.errors import SpecError, UsageError
from robaudit.metric import Metric, MetricParams
from robaudit.pluginmanager import Plugins
from robaudit.validation import InputModel
from robaudit.yamlpos import line_of, structure_problems

#: Seeds are 63-bit non-negative integers: torch generators take them, and check seeds derive
#: from them (see ``robaudit.preparation.check_seed``).
MAX_SEED = 2**63 - 1

#: The reference split's default size limit: metrics that compare against the reference (the
#: neighbours of intertwinedness, the universal perturbation's fit) cost time and memory in its
#: size, and a few thousand samples estimate what they need (design §8).
DEFAULT_REFERENCE_LIMIT = 2048


class _Strict(InputModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NormalizeSpec(_Strict):
    """Per-channel normalisation applied inside the model wrapper."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeSpec:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length (one value per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be > 0")
        return self


#: The keys of a model entry that name where the model comes from (design §3): exactly one.
MODEL_SOURCES = ("factory", "torchscript", "torchvision", "timm", "huggingface", "export")


class ModelSpec(_Strict):
    """A model entry: exactly one source (:data:`MODEL_SOURCES`), ``kwargs`` and ``weights``
    for the sources that build a module (``factory``, ``torchvision``, ``timm``)."""

    factory: str | None = Field(
        None, description='"package.module:callable" or "path/to/file.py:callable"'
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="state_dict or checkpoint, relative to the spec")
    torchscript: str | None = Field(
        None, description="a TorchScript file (deprecated upstream: prefer `export`)")
    torchvision: str | None = Field(
        None, description="a torchvision classification model name (torchvision.models."
                          "get_model); `weights` a local state_dict")
    timm: str | None = Field(
        None, description="a timm model name (timm.create_model); `weights` a local checkpoint;"
                          " needs robaudit[timm]")
    huggingface: str | None = Field(
        None, description="a folder written by save_pretrained (config.json, weights, "
                          "preprocessor_config.json); needs robaudit[hf]")
    export: str | None = Field(None, description="a torch.export program (torch.export.save)")
    input_range: tuple[float, float] = (0.0, 1.0)
    normalize: NormalizeSpec | None = None
    features: str | None = Field(None, description="module whose output is g(x)")

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_.]*", value):
            raise ValueError('expected "module:callable" or "path/to/file.py:callable"')
        return value

    @property
    def source(self) -> tuple[str, str]:
        """The source key and its value, e.g. ``("timm", "resnet18")``."""
        return next((key, value) for key in MODEL_SOURCES
                    if (value := getattr(self, key)) is not None)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [key for key in MODEL_SOURCES if getattr(self, key) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of {', '.join(f'`{k}`' for k in MODEL_SOURCES)}"
                             f"{found}")
        builds = ("factory", "torchvision", "timm")
        if given[0] not in builds and (self.weights or self.kwargs):
            raise ValueError(f"`weights` and `kwargs` go with `factory`, `torchvision` or "
                             f"`timm`, not `{given[0]}`")
        low, high = self.input_range
        if not low < high:
            raise ValueError(f"input_range must be [low, high] with low < high, got {low}, {high}")
        return self


class DataSpec(InputModel):
    """The data: the common keys; a source's own keys are validated by that source."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    source: str = "digits"
    split: str = "test"
    reference: str = "train"
    limit: PositiveInt | None = None
    reference_limit: PositiveInt | None = Field(
        DEFAULT_REFERENCE_LIMIT,
        description="at most this many reference samples (a subset drawn with the spec's seed); "
                    "null for the whole reference split")
    batch_size: PositiveInt = 256
    workers: NonNegativeInt | None = Field(
        None, description="DataLoader processes that read a split decoded on the fly (an image "
                          "folder) in whole-split passes; default: the source's (min(4, CPU "
                          "count) for an image folder), 0: read in the main process")
    ood: str | dict[str, Any] | None = Field(
        None, description="out-of-distribution data, loaded as the split `ood`: a split name "
                          "of this source, or {source, split, limit, ...that source's options}")


class Expect(_Strict):
    """Thresholds: pass when ``min <= value <= max`` (either may be left out); see
    :mod:`robaudit.gate` for ``severity``, ``by`` and ``regression``."""

    min: float | None = None
    max: float | None = None
    severity: Literal["fail", "warn"] = Field(
        "fail", description="`warn`: a violation is `warned` and leaves the exit code alone")
    by: Literal["value", "ci"] = Field(
        "value", description="`ci`: the whole 95% interval must be on the passing side")
    regression: float | None = Field(
        None, ge=0, description="with --baseline: fail when worse than the baseline's value "
                                "by more than this, in the metric's bad direction")

    @model_validator(mode="after")
    def _ordered(self) -> Expect:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The thresholds given, with ``severity`` and ``by`` only where not the default."""
        return self.model_dump(exclude_defaults=True)


class CheckSpec(_Strict):
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-\[\]]+$")
    metric: str
    params: dict[str, Any] = Field(default_factory=dict)
    expect: Expect = Field(default_factory=Expect)
    tags: list[str] = Field(default_factory=list)
    timeout: float | None = Field(
        None, gt=0, description="seconds; past it the check is `error` and the run goes on")


class SpecModel(_Strict):
    """The whole audit spec, as written (design.md §3)."""

    audit: str = Field(description="a name for the report")
    model: ModelSpec
    models: dict[str, ModelSpec] = Field(
        default_factory=dict, description="further named models (e.g. transfer sources)"
    )
    data: DataSpec = Field(default_factory=DataSpec)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the run's seed (0 to 2**63 - 1)")
    checks: list[CheckSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Check:
    """A resolved check: its id, the metric object and validated params; ``index`` is its
    position in the spec's ``checks`` list."""

    id: str
    metric: Metric
    params: MetricParams
    expect: dict[str, Any]
    tags: tuple[str, ...]
    index: int
    timeout: float | None = None

    @property
    def severity(self) -> str:
        return str(self.expect.get("severity", "fail"))


@dataclass(frozen=True)
class AuditSpec:
    """A validated spec, ready to run."""

    path: Path
    model: SpecModel
    source_options: SourceOptions
    checks: tuple[Check, ...]
    node: yaml.Node | None = None
    ood_options: SourceOptions | None = None

    def locate(self, loc: Iterable[str | int], message: str) -> str:
        """A located problem message, ``FILE:LINE: key.path: message``."""
        return locate(self.path, self.node, tuple(loc), message)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.model.audit


# -- --set overrides ------------------------------------------------------------------------
def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``key.path=value`` to the raw spec; the value is parsed as YAML."""
    if "=" not in assignment:
        raise UsageError(f"--set {assignment}: expected key.path=value")
    path, _, text = assignment.partition("=")
    keys = path.strip().split(".")
    if not all(keys):
        raise UsageError(f"--set {assignment}: empty key in {path!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise UsageError(f"--set {assignment}: the value is not valid YAML: {problem}") from None
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UsageError(
                    f"--set {assignment}: {where}: expected an index below {len(node)}"
                )
            index = int(key)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise UsageError(f"--set {assignment}: {where}: the parent is not a mapping or list")


# -- loading --------------------------------------------------------------------------------
def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The spec's data and its node tree. The tree is composed once, checked for duplicate
    keys, depth and alias expansion (:func:`robaudit.yamlpos.structure_problems`), then
    constructed with PyYAML's safe constructor."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: spec file not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the spec: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError([f"{path}:{line}: the spec is not UTF-8 text (byte "
                         f"0x{data[exc.start]:02x} at offset {exc.start})"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        problems = structure_problems(root)
        if problems:
            raise SpecError([f"{path}:{line}: {message}" for line, message in problems])
        return yaml.SafeLoader("").construct_document(root) if root else None, root
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError([f"{where}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: invalid YAML: {exc}"]) from None
    except RecursionError:
        raise SpecError([f"{path}: the YAML is nested too deeply to read"]) from None


def locate(path: Path, root: yaml.Node | None, loc: tuple[str | int, ...], message: str) -> str:
    """``FILE:LINE: key.path: message`` (the line of the deepest key of ``loc`` in ``root``)."""
    line = line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    key = ".".join(str(p) for p in loc) or "(top level)"
    return f"{where}: {key}: {message}"


class _Problems:
    """The located problems of one spec, in the order of their lines."""

    def __init__(self, path: Path, root: yaml.Node | None) -> None:
        self.path, self.root = path, root
        self._found: list[tuple[int, str]] = []

    @property
    def items(self) -> list[str]:
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def add(self, loc: Iterable[str | int], message: str) -> None:
        loc = tuple(loc)
        self._found.append((line_of(self.root, loc) or 0,
                            locate(self.path, self.root, loc, message)))

    def add_validation(self, prefix: tuple[str | int, ...], error: ValidationError,
                       model: type[BaseModel] | None = None) -> None:
        """One problem per pydantic error; an unknown key of ``model`` gets the closest
        known key as a suggestion."""
        for item in error.errors():
            loc = prefix + tuple(p for p in item["loc"] if not _is_union_tag(p))
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown key"
                direct = model is not None and len(item["loc"]) == 1
                close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields),
                                                  n=1) if direct else []
                if close:
                    message += f"; did you mean {close[0]!r}?"
            elif item["type"] not in ("missing", "number_from_string") \
                    and _short(item.get("input")):
                message += f" (got {item['input']!r})"
            self.add(loc, message)


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _short(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and len(repr(value)) < 60


def _check_ids(checks: list[CheckSpec]) -> list[str]:
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.metric] = counts.get(c.metric, 0) + (c.id is None)
    seen: dict[str, int] = {}
    ids = []
    for c in checks:
        if c.id is not None:
            ids.append(c.id)
        elif counts[c.metric] > 1:
            seen[c.metric] = seen.get(c.metric, 0) + 1
            ids.append(f"{c.metric}-{seen[c.metric]}")
        else:
            ids.append(c.metric)
    return ids


def _check_paths(model: dict[str, Any], loc: tuple[str, ...], base: Path,
                 problems: _Problems) -> None:
    """The files a model entry (as written) names must exist."""
    for key in ("weights", "torchscript", "export"):
        value = model.get(key)
        if isinstance(value, str) and not (base / value).is_file():
            hint = (" (a local state_dict file: named pretrained weights would download, "
                    "which robaudit never does)" if key == "weights" and "." not in value
                    else "")
            problems.add((*loc, key), f"file not found: {base / value}{hint}")
    folder = model.get("huggingface")
    if isinstance(folder, str) and not (base / folder).is_dir():
        problems.add((*loc, "huggingface"), f"folder not found: {base / folder} (a folder "
                                            "written by save_pretrained; nothing is downloaded)")
    factory = model.get("factory")
    if isinstance(factory, str) and factory.rsplit(":", 1)[0].endswith(".py"):
        file = base / factory.rsplit(":", 1)[0]
        if not file.is_file():
            problems.add((*loc, "factory"), f"file not found: {file}")


def load_spec(path: str | Path, plugins: Plugins, overrides: Iterable[str] = ()) -> AuditSpec:
    """Read, override, validate and resolve a spec. Raises :class:`SpecError` listing every
    problem, or :class:`UsageError` for an unreadable file or a bad ``--set``.

    Every part is checked even when another part is invalid (the model's paths, the data
    source's options, each check's metric and params, read from the YAML as written), so that
    one round of fixes is enough."""
    path = Path(path)
    raw, root = _read_yaml(path)
    problems = _Problems(path, root)
    if not isinstance(raw, dict):
        problems.add((), "expected a mapping with `audit`, `model`, `data` and `checks`")
        raise SpecError(problems.items)
    for assignment in overrides:
        apply_override(raw, assignment)
    spec: SpecModel | None = None
    try:
        spec = SpecModel.model_validate(raw)
    except ValidationError as exc:
        problems.add_validation((), exc, SpecModel)

    base = path.parent
    models = _mapping(raw.get("models"))
    context = {"base_dir": base, "models": {"model", *models}}
    _check_paths(_mapping(raw.get("model")), ("model",), base, problems)
    for name, entry in models.items():
        _check_paths(_mapping(entry), ("models", name), base, problems)
    if "model" in models:
        problems.add(("models", "model"), "the name `model` is the audited model's; pick another")
    source_options = _source_options(_mapping(raw.get("data")), plugins, context, problems)
    ood_options = _ood_options(_mapping(raw.get("data")).get("ood"), plugins, context, problems)

    checks_raw = raw.get("checks") if isinstance(raw.get("checks"), list) else []
    resolved = [_metric_params(index, _mapping(check), plugins, context, problems)
                for index, check in enumerate(checks_raw)]
    if spec is None or problems.items:
        raise SpecError(problems.items)
    checks = []
    ids = _check_ids(spec.checks)
    for index, (check, check_id, found) in enumerate(zip(spec.checks, ids, resolved,
                                                         strict=True)):
        if ids.count(check_id) > 1:
            problems.add(("checks", index, "id"), f"duplicate check id {check_id!r}")
        assert found is not None  # every check resolved, or problems were raised above
        metric, params = found
        checks.append(Check(check_id, metric, params, check.expect.as_dict(), tuple(check.tags),
                            index, check.timeout))
    if problems.items:
        raise SpecError(problems.items)
    return AuditSpec(path, spec, source_options, tuple(checks), root, ood_options)


#: The keys of a ``data.ood`` mapping that are not its source's own options, and their types.
OOD_KEYS = {"source": str, "split": str, "limit": int}
_KINDS = {str: "a string", int: "an integer"}


def _ood_options(ood: Any, plugins: Plugins, context: dict[str, Any], problems: _Problems
                 ) -> SourceOptions | None:
    """The options of a ``data.ood`` mapping's source, validated by that source."""
    if not isinstance(ood, dict):
        return None
    loc = ("data", "ood")
    for key, kind in OOD_KEYS.items():
        value = ood.get(key)
        if (key == "source" and value is None) or (value is not None and (
                not isinstance(value, kind) or isinstance(value, bool))):
            problems.add((*loc, key), f"expected {_KINDS[kind]}")
    if isinstance(ood.get("limit"), int) and not isinstance(ood["limit"], bool) \
            and ood["limit"] < 1:
        problems.add((*loc, "limit"), "expected a positive number of samples")
    name = ood.get("source")
    if not isinstance(name, str):
        return None
    source = plugins.data_sources.get(name)
    if source is None:
        problems.add((*loc, "source"), _unknown("data source", name, plugins.data_sources))
        return None
    try:
        return source.Options.model_validate(
            {k: v for k, v in ood.items() if k not in OOD_KEYS}, context=context)
    except ValidationError as exc:
        problems.add_validation(loc, exc, source.Options)
        return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _source_options(data: dict[str, Any], plugins: Plugins, context: dict[str, Any],
                    problems: _Problems) -> SourceOptions:
    """The data source's own options, validated by the source (from ``data`` as written)."""
    name = data.get("source", DataSpec.model_fields["source"].default)
    if not isinstance(name, str):
        return SourceOptions()
    source = plugins.data_sources.get(name)
    if source is None:
        problems.add(("data", "source"), _unknown("data source", name, plugins.data_sources))
        return SourceOptions()
    extra = {k: v for k, v in data.items() if k not in DataSpec.model_fields}
    try:
        return source.Options.model_validate(extra, context=context)
    except ValidationError as exc:
        problems.add_validation(("data",), exc, source.Options)
        return SourceOptions()


def _metric_params(index: int, check: dict[str, Any], plugins: Plugins,
                   context: dict[str, Any], problems: _Problems
                   ) -> tuple[Metric, MetricParams] | None:
    """A check's metric and validated params (from the check as written), or None."""
    name = check.get("metric")
    if not isinstance(name, str):
        return None
    metric = plugins.metrics.get(name)
    if metric is None:
        problems.add(("checks", index, "metric"), _unknown("metric", name, plugins.metrics))
        return None
    try:
        params = metric.Params.model_validate(_mapping(check.get("params")), context=context)
    except ValidationError as exc:
        problems.add_validation(("checks", index, "params"), exc, metric.Params)
        return None
    if _mapping(check.get("expect")).get("by") == "ci" and not metric.has_interval:
        problems.add(("checks", index, "expect", "by"),
                     f"`by: ci` needs an interval, and {metric.name} gives none; use `by: value`")
    return metric, params


def _unknown(kind: str, name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = "robaudit metrics" if kind == "metric" else "robaudit plugins"
    return f"unknown {kind} {name!r}{hint} (`{listing}` lists them)"


def spec_json_schema(plugins: Plugins) -> dict[str, Any]:
    """The JSON Schema of a spec, with each registered metric's params (for editors)."""
    schema = SpecModel.model_json_schema()
    variants = []
    for name, metric in sorted(plugins.metrics.items()):
        variants.append({
            "properties": {"metric": {"const": name},
                           "params": metric.Params.model_json_schema()},
        })
    if variants:
        schema["$defs"]["CheckSpec"]["anyOf"] = variants
    return schema


def option_overrides(options: Any) -> list[str]:
    """The ``--set`` overrides of a command line, with ``--device`` and ``--seed`` as theirs."""
    extra = list(getattr(options, "overrides", None) or [])
    if getattr(options, "device", None):
        extra.append(f"device={options.device}")
    if getattr(options, "seed", None) is not None:
        extra.append(f"seed={options.seed}")
    return extra


def load_specs(paths: Iterable[str | Path], plugins: Plugins, overrides: Iterable[str] = ()
               ) -> list[AuditSpec]:
    """Validate every spec before anything runs; report every problem of every spec at once."""
    overrides = list(overrides)
    specs, problems = [], []
    for path in paths:
        try:
            specs.append(load_spec(path, plugins, overrides))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return specs
