"""methods/losses.py: the center loss (Wen et al., ECCV 2016) and BONN's Bayesian feature loss against hand
computations, per sample and per class."""

from __future__ import annotations

import pytest
import torch

from methods.losses import BayesFeatureLoss, CenterLoss


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 5, generator=g), torch.tensor([0, 2, 2, 1, 0, 2, 3])


def test_the_loss_and_its_gradient_are_eq_2_averaged_over_the_batch():
    crit = CenterLoss(num_classes=4, num_features=5)
    crit.centers.copy_(torch.arange(20.0).reshape(4, 5) / 10)
    f, y = _batch()
    f.requires_grad_(True)
    loss = crit(f, y)
    hand = sum(0.5 * float(((f[b] - crit.centers[y[b]]) ** 2).sum()) for b in range(7)) / 7
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    loss.backward()
    assert torch.allclose(f.grad, (f.detach() - crit.centers[y]) / 7, atol=1e-7)
    assert list(crit.parameters()) == []  # the centres get no gradient: a buffer


def test_the_centres_move_by_eq_4():
    crit = CenterLoss(num_classes=4, num_features=5, alpha=0.3)
    crit.centers.copy_(torch.ones(4, 5))
    before = crit.centers.clone()
    f, y = _batch(1)
    crit.step(f, y)
    for m in range(4):
        members = [b for b in range(7) if int(y[b]) == m]
        delta = sum((before[m] - f[b] for b in members), torch.zeros(5)) / (1 + len(members))
        assert torch.allclose(crit.centers[m], before[m] - 0.3 * delta, atol=1e-6), m
    assert torch.equal(crit.centers[3] != before[3], torch.ones(5, dtype=torch.bool))  # class 3: one sample
    diff, counts = crit.center_update(f, y)
    assert counts.tolist() == [2.0, 1.0, 3.0, 1.0] and diff.shape == (4, 5)


def test_bad_shapes_and_rates_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        CenterLoss(10, 8, alpha=0.0)
    with pytest.raises(ValueError, match=r"expected \(batch, 8\)"):
        CenterLoss(10, 8)(torch.zeros(2, 9), torch.tensor([0, 1]))


def test_the_bayes_feature_loss_and_its_class_statistics_by_hand():
    crit = BayesFeatureLoss(num_classes=4, num_features=5, alpha=0.5)
    crit.centers.copy_(torch.arange(20.0).reshape(4, 5) / 10)
    crit.variances.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    f, y = _batch(2)
    hand = 0.0
    for b in range(7):
        d2 = float(((f[b] - crit.centers[y[b]]) ** 2).sum())
        v = float(crit.variances[y[b]])
        hand += 0.5 * (d2 / v + torch.log(torch.tensor(v)).item())
    assert float(crit(f, y)) == pytest.approx(hand / 7, rel=1e-6)
    c0, v0 = crit.centers.clone(), crit.variances.clone()
    crit.step(f, y)
    for m in range(4):
        members = [b for b in range(7) if int(y[b]) == m]
        dc = sum((c0[m] - f[b] for b in members), torch.zeros(5)) / (1 + len(members))
        dv = sum(float(v0[m]) - float(((f[b] - c0[m]) ** 2).sum()) for b in members) / (1 + len(members))
        assert torch.allclose(crit.centers[m], c0[m] - 0.5 * dc, atol=1e-6), m
        assert float(crit.variances[m]) == pytest.approx(max(float(v0[m]) - 0.5 * dv, 1e-6), rel=1e-5), m
