"""``robaudit init``: a starter spec for the user's own model (design §4).

The model is loaded and run on one sample of the data, so that the spec it writes is known to
fit: the input shape, the number of classes and whether the model has a feature layer g(x)
(the metrics of Ghorbani & Zou need one) are read from it. The proposed checks cover accuracy,
noise, minimal and bounded adversarial perturbations, a universal perturbation and, with a
feature layer, deformation. Thresholds are either commented placeholders or, with ``--measure``,
set from a first run with a margin (``MARGIN``), and the file says which.
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robaudit.errors import UsageError

#: With ``--measure``, thresholds leave this much room (relative, and at least ``MIN_ROOM``)
#: on the passing side of the measured value, so that run-to-run noise and small retrainings
#: pass.
MARGIN = 0.1
MIN_ROOM = 0.01


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


def data_entry(source: str, options: list[str]) -> dict[str, Any]:
    """The ``data`` section from ``--data`` and its ``--data-option key=value`` (YAML values)."""
    entry: dict[str, Any] = {"source": source}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise UsageError(f"init: --data-option {option}: expected key=value")
        entry[key] = yaml.safe_load(value)
    return entry


def render(spec: dict[str, Any], checks: list[tuple[Proposal, dict[str, float] | None]],
           facts: list[str], measured: bool, higher_is_better: dict[str, bool]) -> str:
    """The spec as YAML, with comments: what was found, and how thresholds were set."""
    lines = ["# Written by `robaudit init`. What it found:"]
    lines += [f"#   {fact}" for fact in facts]
    lines.append("# Thresholds: " + (
        f"measured on a first run, with a {MARGIN:.0%} margin on the passing side; review "
        "them" if measured else "placeholders (commented out): set them, or rerun "
        "`robaudit init` with --measure"))
    head = {k: v for k, v in spec.items() if k != "checks"}
    lines.append(yaml.safe_dump(head, sort_keys=False, default_flow_style=None).rstrip())
    lines.append("checks:")
    for proposal, expect in checks:
        lines.append(f"  - id: {proposal.id:<10} # {proposal.why}")
        lines.append(f"    metric: {proposal.metric}")
        if proposal.params:
            lines.append(f"    params: {json.dumps(proposal.params)}")
        if expect is None:
            key = "min" if higher_is_better[proposal.metric] else "max"
            lines.append(f"    # expect: {{{key}: ...}}")
        else:
            lines.append(f"    expect: {json.dumps(expect)}")
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


def threshold(value: float, higher_is_better: bool) -> dict[str, float]:
    """A threshold ``MARGIN`` (at least ``MIN_ROOM``) on the passing side of ``value``."""
    room = max(MARGIN * abs(value), MIN_ROOM)
    if higher_is_better:
        return {"min": float(f"{value - room:.4g}")}
    return {"max": float(f"{value + room:.4g}")}


def write_starter(options: argparse.Namespace, plugins: Any) -> Path:
    """Inspect the model on the data, write the starter spec, and return its path."""
    from robaudit.session import Session
    from robaudit.spec import load_spec

    out = Path(options.out)
    if out.exists() and not options.force:
        raise UsageError(f"init: {out} exists; pass --force to overwrite it")
    low, high = options.input_range
    spec: dict[str, Any] = {
        "audit": options.name or f"{out.stem} audit",
        "model": {**model_entry(options.model, options.weights, out.parent),
                  "input_range": [low, high]},
        "data": data_entry(options.data, options.data_option),
        "device": "auto", "seed": 0,
        "checks": [{"metric": p.metric, "params": p.params} for p in proposals(low, high)],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))  # a first draft, to load and inspect
    try:
        session = Session(plugins, argparse.Namespace(overrides=[]))
        plan = session.plan(load_spec(out, plugins))
        with ExitStack() as stack:
            base = session.prepare(plan, stack)
            sample = base.data().x[:1]
            classes = base.model.num_classes(sample)
            features = base.model.has_features
            facts = [f"input {'×'.join(map(str, sample.shape[1:]))}, {classes} classes, "
                     f"{len(base.data())} audit samples",
                     "a feature layer g(x) (the input of the last nn.Linear): deformation "
                     "checks included" if features else
                     "no feature layer g(x) (no nn.Linear): deformation checks left out"]
            facts += source_facts(spec["model"], out.parent)
            chosen = [p for p in proposals(low, high) if features or not p.needs_features]
            expects: list[dict[str, float] | None] = [None] * len(chosen)
            if options.measure:
                by_metric = {c.metric.name: c for c in plan.checks}
                for i, proposal in enumerate(chosen):
                    check = by_metric[proposal.metric]
                    result = session.run_check(check, session.check_context(check, base))
                    if result.value is not None:
                        expects[i] = threshold(result.value, check.metric.higher_is_better)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    directions = {c.metric.name: c.metric.higher_is_better for c in plan.checks}
    out.write_text(render(spec, list(zip(chosen, expects, strict=True)), facts,
                          options.measure, directions))
    load_spec(out, plugins)  # the result validates
    return out
