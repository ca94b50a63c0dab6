"""The runner: per-check seeding, data limits, and set-up errors."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import TOY_HEADER
from toy_plugin import ToyOptions

from robaudit.errors import UsageError
from robaudit.gate import verdict
from robaudit.pluginmanager import load_plugins
from robaudit.preparation import check_seed
from robaudit.session import Session


def run(path, **options):
    session = Session(load_plugins(extra=["toy_plugin"]), argparse.Namespace(**options))
    return session.run([str(path)])


def test_a_checks_seed_does_not_depend_on_the_other_checks(write_spec):
    alone = write_spec(TOY_HEADER + "checks:\n  - {id: a, metric: constant}\n", "alone.yaml")
    more = write_spec(TOY_HEADER + """checks:
  - {id: z, metric: constant}
  - {id: a, metric: constant}
""", "more.yaml")
    [result_alone], _ = run(alone)
    [result_more], _ = run(more)
    seed_alone = result_alone.checks[0].details["seed"]
    assert seed_alone == result_more.checks[1].details["seed"] == check_seed(0, "a")
    assert result_more.checks[0].details["seed"] != seed_alone
    assert result_alone.checks[0].details["run_seed"] == 0


def test_seed_option_changes_the_check_and_run_seeds(write_spec):
    spec = write_spec(TOY_HEADER + "checks:\n  - {id: a, metric: constant}\n")
    [result], _ = run(spec, seed=7)
    assert result.checks[0].details["run_seed"] == 7
    assert result.checks[0].details["seed"] == check_seed(7, "a")


def test_limit_takes_a_seeded_subset_of_the_audit_split(write_spec):
    spec = write_spec(TOY_HEADER.replace("source: toy", "source: toy\n  limit: 10")
                      + "checks:\n  - metric: clean_accuracy\n")
    [result], code = run(spec)
    assert code == 0
    assert result.checks[0].details["samples"] == 10

    def audit_split(seed: int) -> torch.Tensor:
        plugins = load_plugins(extra=["toy_plugin"])
        session = Session(plugins, argparse.Namespace(seed=seed))
        [loaded] = session.load([str(spec)])
        return session.load_data(session.plan(loaded))["test"].x

    full = load_plugins(extra=["toy_plugin"]).data_sources["toy"].load(
        ToyOptions(), spec.parent, 0)["test"].x
    keep = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:10].sort().values
    assert torch.equal(audit_split(0), full[keep])
    assert not torch.equal(audit_split(0), full[:10])


def test_missing_reference_split_is_a_usage_error(write_spec):
    spec = write_spec(TOY_HEADER.replace("source: toy", "source: toy\n  reference: val")
                      + "checks:\n  - metric: constant\n")
    with pytest.raises(UsageError, match=r"data\.reference: split 'val' does not exist"):
        run(spec)


@pytest.mark.parametrize(
    ("value", "expect", "outcome"),
    [(0.5, {"min": 0.5}, "passed"), (0.49, {"min": 0.5}, "failed"),
     (2.0, {"max": 1.0}, "failed"), (0.7, {"min": 0.5, "max": 0.8}, "passed"),
     (3.0, {}, "measured"), (0.49, {"min": 0.5, "severity": "warn"}, "warned"),
     (0.6, {"min": 0.5, "by": "ci"}, "failed")],
)
def test_outcome_against_thresholds(value, expect, outcome):
    ci = (0.45, 0.75)  # the interval decides under `by: ci`
    assert verdict(value, ci, expect, None)[0] == outcome


def test_a_factory_without_weights_is_the_same_model_on_every_run(write_spec, tmp_path):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: clean_accuracy\n")
    values = set()
    for _ in range(3):
        torch.manual_seed(len(values) + 123)  # whatever state the global generator is in
        results, _ = run(spec)
        values.add(results[0].checks[0].value)
    assert len(values) == 1
