"""``ModelUnderAudit``: features, normalisation, and the eval-mode contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.errors import UsageError
from robaudit.model import ModelUnderAudit


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(8, 3))


def test_default_features_are_the_input_of_the_last_linear():
    net = small_net()
    mua = ModelUnderAudit(net)
    x = torch.rand(5, 1, 4, 4)
    with mua:
        feats, logits = mua.features_and_logits(x)
        expected = net[:5](x)
        assert torch.allclose(feats, expected)
        assert torch.allclose(logits, net(x))
        assert torch.allclose(net[5](feats), logits)


def test_named_feature_module_is_its_output_flattened():
    net = small_net()
    mua = ModelUnderAudit(net, features="1")
    x = torch.rand(4, 1, 4, 4)
    with mua:
        assert torch.allclose(mua.features(x), net[1](net[0](x)))


def test_unknown_feature_module_lists_the_choices():
    with pytest.raises(UsageError, match=r"no module named 'fc'.*0, 1, 2"):
        ModelUnderAudit(small_net(), features="fc")


def test_normalize_is_applied_inside_the_wrapper():
    net = small_net()
    mua = ModelUnderAudit(net, normalize=([0.5], [0.25]))
    x = torch.rand(3, 1, 4, 4)
    with mua:
        assert torch.allclose(mua.logits(x), net((x - 0.5) / 0.25))


def test_eval_mode_and_frozen_parameters_are_restored():
    net = small_net()
    net.train()
    net[1].weight.requires_grad_(False)
    mua = ModelUnderAudit(net)
    with mua:
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        x = torch.rand(6, 1, 4, 4)
        assert torch.equal(mua.logits(x), mua.logits(x))  # dropout off, batch norm frozen
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True, True, True]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated
def test_a_torchscript_model_is_audited_by_logit_metrics_and_refused_by_feature_metrics(
        write_spec, toy_dir, robaudit_main):
    traced = torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval(),
                             torch.rand(1, 1, 4, 4))
    traced.save(str(toy_dir / "model.ts"))
    spec = write_spec("""\
audit: scripted
model: {torchscript: model.ts}
data: {source: toy}
checks:
  - {metric: clean_accuracy}
  - {metric: noise_accuracy, params: {sigma: 0.01}}
  - {metric: rank_order_spearman}
""")
    code, out, _ = robaudit_main("run", spec)
    assert code == 1
    assert "2 measured, 1 error" in out.strip().splitlines()[-1]
    assert "TorchScript models take no hooks" in out


def test_a_model_without_linear_layers_gets_logit_metrics(write_spec, robaudit_main):
    spec = write_spec("""\
audit: all-conv
model: {factory: "toy_model.py:all_conv"}
data: {source: toy}
checks:
  - {metric: clean_accuracy}
  - {metric: deepfool_min_distortion}
  - {metric: rank_order_spearman}
""")
    code, out, _ = robaudit_main("run", spec)
    assert code == 1
    assert "2 measured, 1 error" in out.strip().splitlines()[-1]
    assert "name a module with `model.features`" in out
