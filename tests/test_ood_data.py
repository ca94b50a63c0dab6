"""``data.ood`` (issue #11): out-of-distribution data as the split ``ood``, from a split of the
same source or from a second source; the digits' offline OOD transforms."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from robaudit.plugins.loaders.data import digits_splits, transformed

ROOT_SPEC = """\
audit: ood
model:
  factory: robaudit.zoo:digits_resnet
  weights: {weights}
data:
  source: digits
  ood: {ood}
checks:
  - metric: class_divergence
    params: {{ood: ood}}
"""


@pytest.fixture
def spec(tmp_path):
    from conftest import ROOT

    def write(ood: str):
        path = tmp_path / "ood.yaml"
        weights = ROOT / "specs" / "models" / "digits_resnet.pt"
        path.write_text(textwrap.dedent(ROOT_SPEC.format(weights=weights, ood=ood)))
        return path

    return write


def test_transforms_are_the_named_image_operations():
    x = digits_splits()["test"].x[:5]
    assert torch.equal(transformed(x, "rot90")[:, :, 0, :], x[:, :, :, -1])
    assert torch.equal(transformed(x, "flip"), x.flip(3))
    assert torch.equal(transformed(x, "invert"), 1 - x)
    assert transformed(x, "none") is x


def test_ood_from_a_second_source_is_compared_both_ways(spec, robaudit_main, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = robaudit_main("run", spec("{source: digits, split: test, transform: rot90}"),
                                   "--json", report)
    assert code == 0, out + err
    data = json.loads(report.read_text())
    assert data["data"]["sizes"]["ood"] == 450
    [layer] = data["checks"][0]["details"]["ood"].values()
    assert len(layer) == 10 and all(row["kl_in_to_out"] > 0.05 for row in layer)


def test_ood_equal_to_the_audit_split_has_zero_divergence(spec, robaudit_main, tmp_path):
    report = tmp_path / "r.json"
    code, out, err = robaudit_main("run", spec("test"), "--json", report)
    assert code == 0, out + err
    [layer] = json.loads(report.read_text())["checks"][0]["details"]["ood"].values()
    assert all(abs(row["kl_in_to_out"]) < 1e-12 for row in layer)


@pytest.mark.parametrize("ood, message", [
    ("nope", "data.ood: split 'nope' does not exist in 'digits'"),
    ("{source: digitz}", "data.ood.source: unknown data source 'digitz'"),
    ("{source: digits, transform: spin}", "data.ood.transform: Input should be"),
    ("{source: digits, split: valid}", "data.ood.split: split 'valid' does not exist"),
    ("{source: digits, limit: true}", "data.ood.limit: expected an integer"),
])
def test_bad_ood_entries_are_located_usage_errors(spec, robaudit_main, ood, message):
    code, out, err = robaudit_main("run", spec(ood))
    assert code == 4 and "Traceback" not in err, out + err
    assert message in err
