"""``robaudit init``: a starter spec for the user's own model (design §4).

The model is loaded and run on one sample of the data, so that the spec it writes is known to
fit: the input shape, the number of classes and whether the model has a feature layer g(x)
(the metrics of Ghorbani & Zou need one) are read from it. The proposed checks cover accuracy,
noise, minimal and bounded adversarial perturbations, a universal perturbation and, with a
feature layer, deformation. Thresholds are either commented placeholders or, with ``--measure``,
set from a first run at the passing-side end of each check's 95% interval (:data:`MARGIN_RULE`),
and the file says which. The first run measures the very spec it writes (the same check ids,
hence the same seeds, the same split and threads), so that ``robaudit run`` on the written spec
reproduces each measured value exactly. Problems name the option of ``robaudit init`` to change
(``--model``, ``--data-option path=...``, ``--split``), never the draft file it runs on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robaudit.datasource import DataSource
from robaudit.errors import SpecError, UsageError

#: How ``--measure`` sets a threshold. The interval is the check's own (a Student-t interval of
#: the mean of its per-sample values, or the metric's); for a share whose samples all agree
#: (an accuracy of 1) the t interval has zero width and the Wilson interval of the share is used.
#: A value outside a retrained model's interval is unlikely (about 2.5% on one side) unless the
#: model changed, which is what the gate is for.
MARGIN_RULE = ("each threshold is the passing-side end of the check's 95% interval (the Wilson "
               "interval for a share whose samples all agree), rounded outwards to 4 significant "
               "digits; a check without such an interval is left without a threshold")

#: The splits ``init`` audits when ``--split`` is not given, in order of preference: a split
#: held out for testing, else one held out for validation (a folder of ``train/`` and ``val/``).
AUDIT_SPLITS = ("test", "val", "validation")


@dataclass
class Proposal:
    """A proposed check; ``params`` as the spec writes them."""

    id: str
    metric: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)
    needs_features: bool = False


def proposals(low: float, high: float) -> list[Proposal]:
    """The starter checks; budgets scale with the input range ``[low, high]``."""
    span = high - low
    return [
        Proposal("accuracy", "clean_accuracy", "accuracy on the audit split"),
        Proposal("noise", "noise_accuracy", "accuracy under Gaussian noise of 5% of the range",
                 {"sigma": round(0.05 * span, 6)}),
        Proposal("deepfool", "deepfool_min_distortion",
                 "mean relative size of the smallest perturbation that flips a prediction"),
        Proposal("pgd_linf", "pgd_accuracy", "accuracy under a PGD attack of 3% of the range",
                 {"eps": round(0.03 * span, 6)}),
        Proposal("uap", "uap_fooling_rate", "share fooled by one universal perturbation",
                 {"eps": round(0.1 * span, 6)}),
        Proposal("spearman", "rank_order_spearman",
                 "rank-order deformation between input and feature distances",
                 needs_features=True),
    ]


#: ``--model KIND:VALUE`` for the sources named by a prefix; VALUE is a path for those in
#: ``PATH_SOURCES`` (made relative to the spec's folder), a model name otherwise.
NAMED_SOURCES = {"torchvision": "torchvision", "timm": "timm", "huggingface": "huggingface",
                 "hf": "huggingface", "export": "export"}
PATH_SOURCES = ("huggingface", "export")

#: What the starter spec says about a TorchScript model (deprecated upstream).
TORCHSCRIPT_NOTE = ("TorchScript is deprecated upstream: save the model with torch.export.save "
                    "and use `export: PATH` instead")


def model_entry(model: str, weights: str | None, out_dir: Path) -> dict[str, Any]:
    """The ``model`` section: ``torchvision:NAME``, ``timm:NAME``, ``huggingface:DIR`` (or
    ``hf:DIR``), ``export:PATH`` or a ``*.pt2`` file, a TorchScript path (``*.pt`` / ``*.ts`` /
    ``*.pth`` without a colon) or a factory; paths are made relative to the spec's folder."""
    def relative(path: str) -> str:
        return os.path.relpath(Path(path).resolve(), out_dir.resolve())

    prefix, colon, value = model.partition(":")
    if colon and prefix in NAMED_SOURCES:
        key = NAMED_SOURCES[prefix]
        entry = {key: relative(value) if key in PATH_SOURCES else value}
        if weights and key in ("torchvision", "timm"):
            entry["weights"] = relative(weights)
        return entry
    if ":" not in model:
        if not Path(model).is_file():
            raise UsageError(f"init: --model {model}: expected `module:callable`, "
                             "`path/to/file.py:callable`, torchvision:NAME, timm:NAME, "
                             "huggingface:DIR, export:PATH or an existing model file")
        return {"export" if model.endswith(".pt2") else "torchscript": relative(model)}
    file, _, name = model.rpartition(":")
    entry = {"factory": f"{relative(file)}:{name}" if file.endswith(".py") else model}
    if weights:
        entry["weights"] = relative(weights)
    return entry


def data_entry(source: str, options: list[str], split: str | None = None) -> dict[str, Any]:
    """The ``data`` section from ``--data``, its ``--data-option key=value`` (YAML values) and
    ``--split``."""
    entry: dict[str, Any] = {"source": source}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise UsageError(f"init: --data-option {option}: expected key=value")
        entry[key] = yaml.safe_load(value)
    if split is not None:
        entry["split"] = split
    return entry


def audit_split(names: list[str]) -> str:
    """The split to audit when ``--split`` is not given (:data:`AUDIT_SPLITS`)."""
    for name in AUDIT_SPLITS:
        if name in names:
            return name
    raise UsageError(f"init: the data has no {' nor '.join(map(repr, AUDIT_SPLITS))} split to "
                     f"audit (it has {', '.join(map(repr, sorted(names)))}): choose one with "
                     "--split NAME")


class LoadOnce(DataSource):
    """A data source whose splits are loaded once for ``init``: first to choose the audit split,
    then by the run that inspects and measures the model."""

    def __init__(self, source: DataSource) -> None:
        self.source = source
        self.name = source.name  # type: ignore[misc]
        self.Options = source.Options  # type: ignore[misc]
        self.splits: dict[str, Any] | None = None

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, Any]:
        if self.splits is None:
            self.splits = self.source.load(options, base_dir, seed)
        return dict(self.splits)


def option_for(key: str, check_ids: list[str]) -> str:
    """The ``init`` option that sets spec key ``key`` (``data.path`` → ``--data-option
    path=...``)."""
    parts = key.split(".")
    if parts[0] == "data":
        if len(parts) == 1:
            return "--data / --data-option"
        return {"source": "--data", "split": "--split"}.get(parts[1],
                                                             f"--data-option {parts[1]}=...")
    if parts[0] == "model":
        if len(parts) > 1 and parts[1] in ("weights", "input_range"):
            return "--weights" if parts[1] == "weights" else "--input-range"
        return "--model"
    if parts[0] == "checks" and len(parts) > 1 and parts[1].isdigit() \
            and int(parts[1]) < len(check_ids):
        rest = ".".join(parts[2:])
        return (f"the proposed check {check_ids[int(parts[1])]!r}"
                + (f" ({rest}, scaled to --input-range)" if rest else ""))
    return key


def reworded(problem: str, draft: Path, check_ids: list[str]) -> str:
    """A problem located in init's draft spec (``DRAFT:LINE: key.path: message``), reworded to
    name the option to change instead."""
    match = re.match(rf"{re.escape(str(draft))}(?::\d+)?: ([\w.]+): (.*)", problem, re.DOTALL)
    if match is None:
        return problem.replace(str(draft), "the spec")
    return f"{option_for(match.group(1), check_ids)}: {match.group(2)}"


@dataclass
class Measured:
    """What ``--measure`` found for one check: the threshold it set (None: none could be set)
    and the comment that says why."""

    expect: dict[str, float] | None
    note: str


def render(spec: dict[str, Any], checks: list[tuple[Proposal, Measured | None]],
           facts: list[str], measured: bool, higher_is_better: dict[str, bool]) -> str:
    """The spec as YAML, with comments: what was found, and how thresholds were set."""
    lines = ["# Written by `robaudit init`. What it found:"]
    lines += [f"#   {fact}" for fact in facts]
    lines.append("# Thresholds: " + (
        f"measured on a first run of this spec: {MARGIN_RULE}; review them" if measured else
        "placeholders (commented out): set them, or rerun `robaudit init` with --measure"))
    head = {k: v for k, v in spec.items() if k != "checks"}
    lines.append(yaml.safe_dump(head, sort_keys=False, default_flow_style=None).rstrip())
    lines.append("checks:")
    for proposal, measured_check in checks:
        lines.append(f"  - id: {proposal.id:<10} # {proposal.why}")
        lines.append(f"    metric: {proposal.metric}")
        if proposal.params:
            lines.append(f"    params: {json.dumps(proposal.params)}")
        note = f"  # {measured_check.note}" if measured_check is not None else ""
        if measured_check is None or measured_check.expect is None:
            key = "min" if higher_is_better[proposal.metric] else "max"
            lines.append(f"    # expect: {{{key}: ...}}{note}")
        else:
            lines.append(f"    expect: {json.dumps(measured_check.expect)}{note}")
    return "\n".join(lines) + "\n"


def source_facts(entry: dict[str, Any], folder: Path) -> list[str]:
    """What the starter spec says about the model's source: the Hugging Face processor's
    normalisation and input size, or that TorchScript is deprecated."""
    if "torchscript" in entry:
        return [TORCHSCRIPT_NOTE]
    if "timm" in entry:
        return timm_facts(entry["timm"])
    if "huggingface" not in entry:
        return []
    from robaudit.plugins.loaders.models import (
        processor_config,
        processor_normalize,
        processor_size,
    )

    config = processor_config(folder / entry["huggingface"])
    normalize, size = processor_normalize(config), processor_size(config)
    facts = [f"normalisation from preprocessor_config.json: mean {normalize[0]}, std "
             f"{normalize[1]} (set `normalize` to override)" if normalize else
             "no normalisation in preprocessor_config.json (inputs go to the model as given)"]
    if size:
        facts.append(f"the image processor's input size: {size[0]}×{size[1]}")
    return facts


def timm_facts(name: str) -> list[str]:
    """timm's pretrained configuration of ``name`` (input size, mean and std), for the user
    to copy into ``normalize`` when their weights were trained with it."""
    import timm

    config = timm.get_pretrained_cfg(name)
    if config is None or config.mean is None or config.std is None:
        return []
    size = "×".join(map(str, config.input_size))
    return [f"timm's pretrained configuration of {name}: input {size}, mean "
            f"{list(config.mean)}, std {list(config.std)}; add `normalize: {{mean: "
            f"{list(config.mean)}, std: {list(config.std)}}}` if your weights were trained "
            "with it"]


def outwards(value: float, down: bool) -> float:
    """``value`` rounded to 4 significant digits, down (towards -inf) or up."""
    if value == 0 or not math.isfinite(value):
        return value
    rounded = float(f"{value:.4g}")
    step = 10.0 ** (math.floor(math.log10(abs(value))) - 3)
    if down and rounded > value:
        rounded = float(f"{rounded - step:.4g}")
    elif not down and rounded < value:
        rounded = float(f"{rounded + step:.4g}")
    return rounded


def gate_interval(ci: tuple[float, float] | None, samples: tuple[float, ...] | None
                  ) -> tuple[float, float] | None:
    """The interval a threshold is set from (:data:`MARGIN_RULE`): the check's 95% interval,
    or for a share whose samples all agree the Wilson interval of the share; None if neither
    has a width."""
    if ci is not None and ci[1] > ci[0]:
        return ci
    if samples and all(s in (0.0, 1.0) for s in samples) and len(set(samples)) == 1:
        from robaudit.ops.stats import wilson_interval

        return wilson_interval(int(sum(samples)), len(samples))
    return None


def measured(value: float | None, ci: tuple[float, float] | None,
             samples: tuple[float, ...] | None, higher_is_better: bool, message: str
             ) -> Measured:
    """The threshold of one measured check (:data:`MARGIN_RULE`), with the measured value (in
    full, so that a rerun can be compared with it) and interval as its note."""
    if value is None:
        return Measured(None, f"could not be measured: {message}; no threshold set")
    interval = gate_interval(ci, samples)
    if interval is None:
        return Measured(None, f"measured {value!r} with no interval to set a margin from; "
                              "set a threshold yourself")
    note = f"measured {value!r}, 95% CI {interval[0]:.4g}–{interval[1]:.4g}"
    if higher_is_better:
        return Measured({"min": outwards(interval[0], down=True)}, note)
    return Measured({"max": outwards(interval[1], down=False)}, note)


def write_draft(out: Path, spec: dict[str, Any], plugins: Any) -> Any:
    """Write ``spec`` to ``out`` as a first draft and load it (an :class:`AuditSpec`)."""
    from robaudit.spec import load_spec

    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(out, plugins)


def write_starter(options: argparse.Namespace, plugins: Any) -> Path:
    """Inspect the model on the data, write the starter spec, and return its path. The model
    is inspected, and with ``--measure`` measured, on a draft of the very spec written."""
    from robaudit.spec import load_spec

    out = Path(options.out)
    if out.exists() and not options.force:
        raise UsageError(f"init: {out} exists; pass --force to overwrite it")
    low, high = options.input_range
    every = proposals(low, high)
    spec: dict[str, Any] = {
        "audit": options.name or f"{out.stem} audit",
        "model": {**model_entry(options.model, options.weights, out.parent),
                  "input_range": [low, high]},
        "data": data_entry(options.data, options.data_option, options.split),
        "device": "auto", "seed": 0,
        "checks": [{"id": p.id, "metric": p.metric, "params": p.params} for p in every],
    }
    source = plugins.data_sources.get(options.data)
    if source is not None:
        plugins = dataclasses.replace(plugins, data_sources={**plugins.data_sources,
                                                             options.data: LoadOnce(source)})
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.name}.draft")  # beside it: the same relative paths
    try:
        chosen, measures, facts, directions = inspect(draft, spec, plugins, options)
    except SpecError as exc:
        problems = [reworded(p, draft, [p.id for p in every]) for p in exc.problems]
        raise UsageError("init: " + "\n  ".join(problems)) from None
    except UsageError as exc:
        if str(exc).startswith("init: "):
            raise
        raise UsageError("init: " + reworded(str(exc), draft, [p.id for p in every])) from None
    finally:
        draft.unlink(missing_ok=True)
    out.write_text(render(spec, list(zip(chosen, measures, strict=True)), facts,
                          options.measure, directions))
    load_spec(out, plugins)  # the result validates
    return out


def inspect(draft_path: Path, spec: dict[str, Any], plugins: Any, options: argparse.Namespace
            ) -> tuple[list[Proposal], list[Measured | None], list[str], dict[str, bool]]:
    """Run the draft spec's model on its data: the checks that fit it, what ``--measure``
    found for each, the facts found, and each metric's direction. Without ``--split`` the
    audit split is chosen from the source's splits (:func:`audit_split`); ``spec`` is updated
    with it."""
    from robaudit.runsetup import plan_threads
    from robaudit.session import Session

    draft = write_draft(draft_path, spec, plugins)
    if options.split is None:
        data = draft.model.data
        try:
            names = list(plugins.data_sources[data.source].load(draft.source_options,
                                                                draft.base_dir, draft.model.seed))
        except UsageError as exc:  # as the run reports it (Session.load_data)
            raise UsageError(f"{draft.path}: {exc}") from None
        except Exception as exc:
            raise UsageError(draft.locate(("data",), f"the {data.source!r} source could not "
                                                     f"load the data: {type(exc).__name__}: "
                                                     f"{exc}")) from None
        split = audit_split(names)
        if split != data.split:
            spec["data"]["split"] = split
            draft = write_draft(draft_path, spec, plugins)
    session = Session(plugins, argparse.Namespace(overrides=[]))
    warned: list[str] = []
    session.warn = warned.append  # said in the written file, which names no draft
    plan = session.plan(draft)
    low, high = options.input_range
    with ExitStack() as stack:
        base = session.prepare(plan, stack)
        sample = base.data().x[:1]
        classes = base.model.num_classes(sample)
        features = base.model.has_features
        facts = [f"input {'×'.join(map(str, sample.shape[1:]))}, {classes} classes, "
                 f"{len(base.data())} audit samples (split {base.split!r})",
                 "a feature layer g(x) (the input of the last nn.Linear): deformation "
                 "checks included" if features else
                 "no feature layer g(x) (no nn.Linear): deformation checks left out"]
        facts += source_facts(spec["model"], draft_path.parent)
        if warned:
            facts.append("a factory without `weights` (no --weights): unless it loads trained "
                         "weights itself, this audits its random initialisation")
        chosen = [p for p in proposals(low, high) if features or not p.needs_features]
        measures: list[Measured | None] = [None] * len(chosen)
        if options.measure:
            by_id = {c.id: c for c in plan.checks}
            with plan_threads(plan.threads):  # as `robaudit run` will run them
                for i, proposal in enumerate(chosen):
                    check = by_id[proposal.id]
                    result = session.run_check(check, session.check_context(check, base),
                                               plan.blocked.get(check.id),
                                               plan.data_identity.get("fingerprint"))
                    measures[i] = measured(result.value, result.ci, result.samples,
                                           check.metric.higher_is_better, result.message)
    directions = {c.metric.name: c.metric.higher_is_better for c in plan.checks}
    return chosen, measures, facts, directions
