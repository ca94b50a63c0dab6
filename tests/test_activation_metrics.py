"""The Khaitan (2024) activation metrics against answers known independently: planted firing
probabilities, planted class subspaces, class-independent activations, numpy loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_activation_ops import brute_significance
from torch import nn

from robaudit.errors import MetricError, ParamError
from robaudit.ops.activations import bernoulli_kl
from robaudit.plugins.metrics.activations.activation_sparsity import ActivationSparsity
from robaudit.plugins.metrics.activations.adversarial_likelihood import (
    AdversarialLikelihood,
    _same_norm_noise,
)
from robaudit.plugins.metrics.activations.class_divergence import ClassDivergence
from robaudit.plugins.metrics.activations.interaction_significance import (
    InteractionSignificance,
)
from robaudit.plugins.metrics.activations.manifold_entanglement import ManifoldEntanglement
from robaudit.testing import make_context, run_metric


class ReluNet(nn.Module):
    """x → identity Linear → ReLU → head: the ReLU's units fire exactly where x > 0."""

    def __init__(self, dim: int, classes: int = 2) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.hidden.weight.data = torch.eye(dim)
        self.hidden.bias.data.zero_()
        self.relu = nn.ReLU()
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.hidden(x)))


def test_units_with_known_firing_probabilities_give_those_frequencies():
    """Unit i is on for exactly the first p_i · N samples."""
    p = np.array([0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
    n = 200
    on = np.arange(n)[:, None] < (p * n)[None, :]
    x = torch.tensor(np.where(on, 1.0, -1.0), dtype=torch.float32)
    y = torch.arange(n) % 2
    ctx = make_context(ReluNet(len(p)), x, y, batch_size=33)
    result = run_metric(ActivationSparsity(), ctx, layers=["relu"], bins=10)
    layer = result.details["layers"][0]
    assert result.value == pytest.approx(p.mean())
    assert layer["always_on"] == pytest.approx(1 / 6) and layer["never_on"] == pytest.approx(1 / 6)
    np.testing.assert_allclose(result.figures[0].values, p)
    assert sum(layer["histogram"]) == len(p)


def test_random_firing_matches_its_probabilities_within_sampling_error():
    p = np.array([0.05, 0.3, 0.6, 0.95])
    n = 4000
    rng = np.random.default_rng(0)
    x = torch.tensor(np.where(rng.random((n, 4)) < p, 1.0, -1.0), dtype=torch.float32)
    ctx = make_context(ReluNet(4), x, torch.zeros(n, dtype=torch.long))
    # default layers: the inputs of the last two nn.Linear (x itself, and the ReLU's output)
    result = run_metric(ActivationSparsity(), ctx)
    for layer in result.details["layers"]:
        assert layer["layer"] in ("input of hidden", "input of head")
    frequencies = np.asarray(result.figures[1].values)
    assert np.all(np.abs(frequencies - p) < 4 * np.sqrt(p * (1 - p) / n))


def planted(seed: int = 0, dim: int = 12, per_class: int = 40):
    """3 classes in R^12 spanned by basis columns {0..3}, {3..5}, {6..10}: ranks 4, 3, 5;
    classes 0 and 1 share the one direction e_3, class 2 is disjoint from both. Each class's
    rows mix its directions with Gaussian coefficients (full rank almost surely)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    spans = [range(0, 4), range(3, 6), range(6, 11)]
    xs = [torch.randn(per_class, len(s), generator=g, dtype=torch.float64) @ q[:, list(s)].T
          for s in spans]
    x = torch.cat(xs)
    y = torch.arange(3).repeat_interleave(per_class)
    return x, y, [len(s) for s in spans]


def test_planted_subspaces_give_their_ranks_and_the_inclusion_exclusion_overlap():
    x, y, ranks = planted()
    model = nn.Sequential(nn.Linear(12, 3)).double()
    ctx = make_context(model, x, y, batch_size=17)
    result = run_metric(ManifoldEntanglement(), ctx)  # default: the input of the last Linear
    layer = result.details["layers"][0]
    assert layer["layer"] == "input of 0"
    assert [r["rank"] for r in result.details["ranks"]["input of 0"]] == ranks
    expected = np.array([[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(result.details["overlap"]["input of 0"], expected, atol=1e-12)
    assert result.value == pytest.approx(1 / 9)
    # numpy's rank of the stacked rows, by inclusion–exclusion
    flat = x.numpy()
    for a, b in itertools.combinations(range(3), 2):
        both = flat[(y == a) | (y == b)]
        union = np.linalg.matrix_rank(both, tol=1e-3 * np.linalg.svd(both)[1][0])
        assert ranks[a] + ranks[b] - union == round(expected[a, b] * min(ranks[a], ranks[b]))
    assert layer["undersampled"] == [] and layer["too_few_samples"] == []


def test_a_class_with_too_few_samples_for_a_rank_is_reported():
    x, y, _ = planted(per_class=40)
    keep = torch.cat([torch.arange(0, 80), torch.tensor([80])])  # class 2: one sample
    small = torch.cat([torch.arange(0, 40), torch.arange(40, 45)])  # class 1: 5 < 12 units
    model = nn.Sequential(nn.Linear(12, 3)).double()
    with pytest.raises(MetricError, match=r"only 2 of 3 classes \(the others have fewer than 2"):
        run_metric(ManifoldEntanglement(), make_context(model, x[keep], y[keep]))
    result = run_metric(ManifoldEntanglement(), make_context(model, x[keep], y[keep]),
                        min_included=0.6)
    assert result.details["layers"][0]["too_few_samples"] == [2]
    assert result.details["included"] == {"used": 2, "asked": 3, "share": 2 / 3}
    result = run_metric(ManifoldEntanglement(), make_context(model, x[small], y[small]))
    assert result.details["layers"][0]["undersampled"] == [1]


def test_classes_whose_activations_do_not_depend_on_the_class_have_kl_zero():
    """The same inputs under every label: identical class distributions, KL 0 exactly; inputs
    drawn independently of a random label: KL near 0; class-dependent inputs: clearly above."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    base = torch.randn(50, 6)
    same = run_metric(ClassDivergence(),
                      make_context(model, base.repeat(4, 1), torch.arange(4).repeat_interleave(50)))
    assert same.value == pytest.approx(0.0, abs=1e-12)
    assert len(set(np.round(same.details["entropy"]["input of 2"], 12))) == 1

    n = 8000
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(2))
    independent = run_metric(ClassDivergence(), make_context(model, x, y))
    dependent = run_metric(ClassDivergence(), make_context(model, x + 2.0 * nn.functional.one_hot(
        y, 6).float(), y))
    assert independent.value < 2e-3
    assert dependent.value > 50 * independent.value


def test_class_divergence_equals_a_brute_force_computation():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(60, 4)
    y = torch.arange(60) % 3
    result = run_metric(ClassDivergence(), make_context(model, x, y), smoothing=1.0)
    with torch.no_grad():
        h = model[1](model[0](x)).numpy()
    head = model[2]
    sig = brute_significance(h, head.weight.detach().numpy(), head.bias.detach().numpy(), True)
    p = [(sig[y.numpy() == c].sum(0).ravel() + 1.0) / (20 + 2.0) for c in range(3)]
    kl = [[np.mean(p[a] * np.log(p[a] / p[b]) + (1 - p[a]) * np.log((1 - p[a]) / (1 - p[b])))
           for b in range(3)] for a in range(3)]
    np.testing.assert_allclose(result.details["kl"]["input of 2"], kl, atol=1e-12)
    assert result.value == pytest.approx(np.mean([kl[a][b] for a in range(3) for b in range(3)
                                                  if a != b]))


def test_interaction_significance_equals_a_numpy_loop():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(50, 6)
    y = torch.arange(50) % 3
    for count_bias in (True, False):
        result = run_metric(InteractionSignificance(), make_context(model, x, y),
                            count_bias=count_bias)
        with torch.no_grad():
            h = model[1](model[0](x)).numpy()
        sig = brute_significance(h, model[2].weight.detach().numpy(),
                                 model[2].bias.detach().numpy(), count_bias)
        np.testing.assert_allclose(result.samples, sig.reshape(50, -1).mean(1), atol=1e-12)
        assert result.value == pytest.approx(sig.mean())


def test_interaction_layers_must_be_linear():
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    ctx = make_context(model, torch.randn(10, 6), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ParamError, match=r"not an nn\.Linear; the model's nn.Linear: 0, 2"):
        run_metric(InteractionSignificance(), ctx, layers=["1"])
    with pytest.raises(ParamError, match="no module named 'fc'"):
        run_metric(ClassDivergence(), ctx, layers=["fc"])
    with pytest.raises(ParamError, match="no split named 'imagenet_r'"):
        run_metric(ClassDivergence(), ctx, ood="imagenet_r")


def test_ood_split_gives_kl_both_ways():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(300) % 3
    shifted = (x * 3 + 1, y)
    same = run_metric(ClassDivergence(), make_context(model, x, y), ood="train")
    moved = run_metric(ClassDivergence(), make_context(model, x, y, reference=shifted),
                       ood="train")
    rows = same.details["ood"]["input of 2"]
    assert [r["class"] for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([r["kl_in_to_out"] for r in rows], 0, atol=1e-12)
    assert same.details["layers"][0]["ood_mean_kl_out_to_in"] == pytest.approx(0, abs=1e-12)
    rows = moved.details["ood"]["input of 2"]
    forward, backward = ([r[k] for r in rows] for k in ("kl_in_to_out", "kl_out_to_in"))
    assert min(forward) > 0.01 and min(backward) > 0.01 and forward != backward
    # the means in the layer row are those of the class rows
    layer = moved.details["layers"][0]
    assert layer["ood_mean_kl_in_to_out"] == pytest.approx(np.mean(forward))


def _likelihood_setting():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(90, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(90) % 3
    return model, x, y


def test_adversarial_likelihood_clean_part_equals_a_numpy_computation():
    """The distributions come from the reference split and score the audit split."""
    model, x, y = _likelihood_setting()
    reference = torch.rand(60, 8, generator=torch.Generator().manual_seed(2))
    ref_y = torch.arange(60) % 3
    result = run_metric(AdversarialLikelihood(),
                        make_context(model, x, y, reference=(reference, ref_y)),
                        eps=0.05, steps=5)

    def patterns(inputs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            h = model[1](model[0](inputs)).numpy()
        return brute_significance(h, model[2].weight.detach().numpy(),
                                  model[2].bias.detach().numpy(), True).reshape(len(h), -1)

    sig, ref_sig = patterns(x), patterns(reference)
    labels, ref_labels = y.numpy(), ref_y.numpy()
    p = np.stack([(ref_sig[ref_labels == c].sum(0) + 0.5) / (20 + 1.0) for c in range(3)])
    ll = np.mean(sig * np.log(p[labels]) + (1 - sig) * np.log(1 - p[labels]), axis=1)
    assert result.details["clean_log_likelihood"] == pytest.approx(ll.mean(), abs=1e-12)
    assert result.details["in_sample"] is False and result.details["fit_split"] == "train"
    assert np.isfinite(result.samples).all()
    same = run_metric(AdversarialLikelihood(), make_context(model, x, y), eps=0.05, steps=5)
    assert same.details["in_sample"] is True
    # in-sample, a sample's own pattern raises its likelihood
    assert same.details["clean_log_likelihood"] > result.details["clean_log_likelihood"]


def test_likelihood_noise_control_has_the_attacks_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 4, generator=g)
    delta = torch.randn(6, 3, 4, generator=g) * torch.linspace(0.01, 0.1, 6).view(6, 1, 1)
    seeds = torch.arange(6)
    for norm, order in (("linf", float("inf")), ("l2", 2.0)):
        noisy = _same_norm_noise(x, delta, norm, seeds, (-10.0, 10.0))
        torch.testing.assert_close(torch.linalg.vector_norm((noisy - x).flatten(1), order, dim=1),
                                   torch.linalg.vector_norm(delta.flatten(1), order, dim=1))
        again = _same_norm_noise(x[2:], delta[2:], norm, seeds[2:], (-10.0, 10.0))
        torch.testing.assert_close(again, noisy[2:])  # a sample's noise is its own seed's


def test_on_an_input_independent_model_attack_and_noise_drop_nothing():
    """The head reads a dead ReLU: patterns do not depend on the input, so the drop is 0
    under both, and the noise control says the same as the attack."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
        model[2].bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    _, x, y = _likelihood_setting()
    result = run_metric(AdversarialLikelihood(), make_context(model, x, y), eps=0.1, steps=3)
    assert result.value == 0.0 and result.details["noise_drop"] == 0.0


def test_audit_samples_of_a_class_missing_from_the_reference_are_left_out():
    model, x, y = _likelihood_setting()
    keep = y != 2
    ctx = make_context(model, x, y, reference=(x[keep], y[keep]))
    with pytest.raises(MetricError, match=r"only 60 of 90 audit samples \(the others' class "
                                          "has no reference samples"):
        run_metric(AdversarialLikelihood(), ctx, eps=0.05, steps=2)
    result = run_metric(AdversarialLikelihood(), ctx, eps=0.05, steps=2, min_included=0.5)
    assert result.details["included"]["used"] == 60 and len(result.samples) == 60
    assert [row["class"] for row in result.details["classes"]] == [0, 1]


def test_a_vanishing_attack_leaves_the_likelihood_unchanged():
    model, x, y = _likelihood_setting()
    result = run_metric(AdversarialLikelihood(), make_context(model, x, y), eps=1e-7, steps=2)
    assert abs(result.value) < 1e-3


@pytest.mark.parametrize("metric,params", [
    (ActivationSparsity(), {}),
    (InteractionSignificance(), {}),
    (ClassDivergence(), {"layers": ["0", "2"]}),
    (ManifoldEntanglement(), {"layers": ["1", "2"]}),
    (AdversarialLikelihood(), {"eps": 0.1, "steps": 4}),
])
def test_values_do_not_depend_on_the_batch_size(metric, params):
    model, x, y = _likelihood_setting()
    values = [run_metric(metric, make_context(model, x, y, batch_size=b), **params)
              for b in (7, 90)]
    assert values[0].value == pytest.approx(values[1].value, rel=1e-9, abs=1e-12)
    if values[0].samples is not None:
        np.testing.assert_allclose(values[0].samples, values[1].samples, atol=1e-12)


def test_a_misspelt_layer_in_a_spec_is_a_located_error_listing_close_names(write_spec,
                                                                          robaudit_main):
    spec = write_spec("""\
        audit: toy audit
        model:
          factory: toy_model.py:linear
        data:
          source: toy
        checks:
          - metric: activation_sparsity
            params: {layers: ["Flaten"]}
        """)
    code, out, err = robaudit_main("run", spec)
    assert code == 4
    assert "checks.0.params.layers: no module named 'Flaten'; closest: 0 (Flatten)" in out + err


def test_a_class_of_dead_units_has_no_rank_and_is_an_error_not_overlap_zero():
    """Every ReLU dead on class 1 (its inputs all negative): rank 0, overlap 0/0."""
    x, y, _ = planted()
    x = x.float().abs()
    x[y == 1] = -x[y == 1]
    model = ReluNet(12, classes=3)
    with pytest.raises(MetricError, match=r"class\(es\) 1 have rank 0 at input of head"):
        run_metric(ManifoldEntanglement(), make_context(model, x, y))
    assert not ManifoldEntanglement.has_interval  # the docstring says why


def test_class_divergence_with_rare_interactions_is_biased_by_many_standard_errors():
    """Why class_divergence has no interval: counts drawn from known Bernoullis (3 classes,
    200 interactions with p < 0.05, 45 samples a class) give a plug-in KL far above the KL of
    the probabilities it estimates (smoothed as the estimate is), by many times its spread."""
    g = torch.Generator().manual_seed(0)
    classes, k, n = 3, 200, 45
    p = 0.05 * torch.rand(classes, k, generator=g, dtype=torch.float64)

    def mean_kl(q: torch.Tensor) -> float:
        return float(bernoulli_kl(q, q)[~torch.eye(classes, dtype=torch.bool)].mean())

    truth = mean_kl((n * p + 0.5) / (n + 1.0))
    draws = [mean_kl((torch.binomial(torch.full((classes, k), float(n), dtype=torch.float64), p,
                                     generator=g) + 0.5) / (n + 1.0)) for _ in range(200)]
    assert (np.mean(draws) - truth) > 5 * np.std(draws)
    assert not ClassDivergence.has_interval and not ManifoldEntanglement.has_interval


def test_by_ci_is_a_spec_error_on_both_and_the_metrics_page_says_why(write_spec,
                                                                     robaudit_main):
    for metric, reason in (("class_divergence", "biased"), ("manifold_entanglement", "rank")):
        spec = write_spec(f"""\
            audit: toy audit
            model:
              factory: toy_model.py:linear
            data:
              source: toy
            checks:
              - metric: {metric}
                expect: {{max: 0.5, by: ci}}
            """)
        code, out, err = robaudit_main("run", spec)
        assert code == 4
        assert f"`by: ci` needs an interval, and {metric} gives none" in out + err
        code, out, err = robaudit_main("metrics", metric)
        assert "No confidence interval" in out and reason in out
