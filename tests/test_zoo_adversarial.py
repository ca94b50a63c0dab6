"""The adversarially trained zoo model (Madry et al. 2018; issue 21): the recipe's PGD and one
training step, and the shipped checkpoint's robustness against the standard model's."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from robaudit.ops.attacks import pgd
from robaudit.ops.sampling import sample_seeds
from robaudit.plugins.loaders.data import digits_splits
from robaudit.zoo import ZOO, digits_resnet
from robaudit.zoo.adversarial import MADRY_DIGITS, PGDTraining
from robaudit.zoo.training import accuracy, fit

MODELS = Path(__file__).parent.parent / "specs" / "models"


def _load(name: str) -> torch.nn.Module:
    model = digits_resnet()
    model.load_state_dict(torch.load(MODELS / name, weights_only=True, map_location="cpu"))
    return model.eval()


def test_training_attack_stays_in_the_ball_and_raises_the_loss() -> None:
    model = _load("digits_resnet.pt")
    test = digits_splits()["test"]
    x, y = test.x[:64], test.y[:64]
    attack = PGDTraining(eps=0.1, steps=7, step_size=2.5 * 0.1 / 7)
    adv = attack(model, x, y, torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y)
        adv_loss = F.cross_entropy(model(adv), y)
    assert float(adv_loss) > 2 * float(clean_loss)
    again = attack(model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)  # the start is drawn from the training generator


def test_recipe_runs_one_tiny_adversarial_step() -> None:
    entry = ZOO["digits_resnet_pgd"]
    assert entry.perturb is MADRY_DIGITS and entry.factory == "robaudit.zoo:digits_resnet"
    train = digits_splits()["train"]
    torch.manual_seed(0)
    model = entry.build()
    before = [p.detach().clone() for p in model.parameters()]
    calls: list[int] = []

    def counted(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                g: torch.Generator) -> torch.Tensor:
        calls.append(len(x))
        return PGDTraining(eps=0.1, steps=1, step_size=0.1)(m, x, y, g)

    fit(model, train.x[:16], train.y[:16], epochs=1, lr=0.05, batch_size=16, seed=0,
        perturb=counted)
    assert calls == [16]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_shipped_adversarially_trained_model_is_more_robust_under_pgd() -> None:
    path = MODELS / "digits_resnet_pgd.pt"
    assert path.stat().st_size < 1_000_000
    robust, plain = _load("digits_resnet_pgd.pt"), _load("digits_resnet.pt")
    test = digits_splits()["test"]
    assert accuracy(robust, test.x, test.y) >= 0.95
    x, y = test.x[:100], test.y[:100]
    seeds = sample_seeds(torch.Generator().manual_seed(0), len(x))
    robust_accuracy = {}
    for name, model in (("robust", robust), ("plain", plain)):
        adv = pgd(model, x, y, eps=0.05, norm="linf", steps=20, step_size=2.5 * 0.05 / 20,
                  seeds=seeds, input_range=(0.0, 1.0))
        robust_accuracy[name] = accuracy(model, adv, y)
    # shipped weights: 0.94 against 0.78 on these 100 samples
    assert robust_accuracy["robust"] >= robust_accuracy["plain"] + 0.08
