"""Losses against values worked out by hand on 2-D points at known angles, and NT-Xent against
pytorch-metric-learning's reference implementation."""

import math

import pytest
import torch

from siamsearch.core.config import TrainConfig
from siamsearch.training.losses import (
    BATCH_LOSSES,
    DEFAULT_HINGES,
    batch_contrastive_loss,
    batch_loss,
    batch_ntxent_loss,
    batch_triplet_loss,
    contrastive_loss,
    koleo_loss,
    triplet_margin_loss,
)

E0 = torch.tensor([[1.0, 0.0]])  # angle 0
E90 = torch.tensor([[0.0, 1.0]])  # angle 90°: distance sqrt(2) from E0
E180 = torch.tensor([[-1.0, 0.0]])  # angle 180°: distance 2 from E0


def test_similar_pair_pays_squared_distance():
    loss = contrastive_loss(E0, E90, same=torch.tensor([True]), hinge=2.0)
    assert loss.item() == pytest.approx(2.0)  # d² = (√2)²


def test_dissimilar_pair_pays_squared_hinge():
    loss = contrastive_loss(E0, E90, same=torch.tensor([False]), hinge=2.0)
    assert loss.item() == pytest.approx((2.0 - math.sqrt(2)) ** 2)


def test_dissimilar_pair_beyond_the_hinge_is_free_and_label_is_not_inverted():
    far = contrastive_loss(E0, E180, same=torch.tensor([False]), hinge=1.5)
    near_same = contrastive_loss(E0, E0, same=torch.tensor([True]), hinge=1.5)
    assert far.item() == 0.0 and near_same.item() == 0.0
    # the inverted convention ("1 means dissimilar") would make both of these non-zero
    assert contrastive_loss(E0, E180, same=torch.tensor([True]), hinge=1.5).item() == pytest.approx(4.0)


def test_pair_loss_is_mean_over_pairs():
    a, b = torch.cat([E0, E0]), torch.cat([E90, E180])
    loss = contrastive_loss(a, b, same=torch.tensor([True, False]), hinge=3.0)
    assert loss.item() == pytest.approx((2.0 + (3.0 - 2.0) ** 2) / 2)


def test_triplet_margin_loss_by_hand():
    assert triplet_margin_loss(E0, E90, E180, hinge=1.0).item() == pytest.approx(math.sqrt(2) - 2 + 1)
    assert triplet_margin_loss(E0, E90, E180, hinge=0.2).item() == 0.0


def test_batch_contrastive_averages_positives_and_active_negatives():
    # points: a(0°) and b(90°) share identity 0; c(180°) is identity 1.
    emb = torch.cat([E0, E90, E180])
    labels = torch.tensor([0, 0, 1])
    # positives: (a,b) d=√2 → 2.  negatives: (a,c) d=2 → 0 (inactive at hinge 1.5); (b,c) d=√2 → (1.5-√2)²
    expected = 2.0 + (1.5 - math.sqrt(2)) ** 2
    assert batch_contrastive_loss(emb, labels, hinge=1.5).item() == pytest.approx(expected)


def test_batch_triplet_averages_active_triplets():
    emb = torch.cat([E0, E90, E180])
    labels = torch.tensor([0, 0, 1])
    # triplets (a,b,c): √2-2+m ; (b,a,c): √2-√2+m = m.  With m=1 both active.
    expected = ((math.sqrt(2) - 2 + 1) + 1) / 2
    assert batch_triplet_loss(emb, labels, hinge=1.0).item() == pytest.approx(expected)


def test_batch_losses_have_gradients_and_zero_when_solved():
    emb = torch.cat([E0, E0, E180]).requires_grad_()
    labels = torch.tensor([0, 0, 1])
    for fn in (batch_contrastive_loss, batch_triplet_loss):
        loss = fn(emb, labels, 0.5)
        assert loss.item() == 0.0
        loss.backward()  # no NaN from sqrt at zero distance
        assert torch.isfinite(emb.grad).all()


def test_ntxent_by_hand():
    emb = torch.cat([E0, E0, E90])  # anchor 0: positive at cos 1, negative at cos 0
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    anchor = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0)))  # anchors 0 and 1 alike; 2 has none
    assert batch_ntxent_loss(emb, labels, temperature=t).item() == pytest.approx(anchor)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ntxent_equals_pytorch_metric_learning(seed):
    pml = pytest.importorskip("pytorch_metric_learning.losses", reason="reference implementation (test extra)")
    emb, labels = _unit(16, 8, seed), torch.arange(8).repeat(2)  # two views each: SimCLR's batch
    ours = batch_ntxent_loss(emb, labels, temperature=0.1)
    assert ours.item() == pytest.approx(pml.NTXentLoss(temperature=0.1)(emb, labels).item(), rel=1e-5)
    # With K > 2 views it is the multi-positive form of Khosla et al. (SupCon's L_out).
    emb, labels = _unit(24, 8, seed), torch.arange(6).repeat(4)
    ours = batch_ntxent_loss(emb, labels, temperature=0.2)
    assert ours.item() == pytest.approx(pml.SupConLoss(temperature=0.2)(emb, labels).item(), rel=1e-5)


def test_batch_loss_binds_the_right_setting():
    emb, labels = _unit(8, 4, 0).requires_grad_(), torch.arange(4).repeat(2)
    assert batch_loss("ntxent", 1.0, 0.3)(emb, labels).item() == pytest.approx(
        batch_ntxent_loss(emb, labels, temperature=0.3).item())
    assert batch_loss("triplet", 0.4, 0.3)(emb, labels).item() == pytest.approx(
        batch_triplet_loss(emb, labels, hinge=0.4).item())
    for name, hinge in DEFAULT_HINGES.items():  # hinge=None: the loss's own default
        assert batch_loss(name, None, 0.3)(emb, labels).item() == pytest.approx(
            BATCH_LOSSES[name](emb, labels, hinge=hinge).item())
    loss = batch_ntxent_loss(emb, labels)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_a_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(loss="ntxent", temperature=0.0)


def test_koleo_by_hand_on_three_points():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # nearest other point: 0 → 1 at √2, 1 → 0 or 2 at √2, 2 → 1 at √2
    assert koleo_loss(emb, torch.tensor([0, 1, 2])).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    # an image's own view is no neighbour: 0 and 1 share a label, so 0 → 2 at 2, 1 → 2 at √2, 2 → 1 at √2
    expected = -(math.log(2) + 2 * math.log(math.sqrt(2))) / 3
    assert koleo_loss(emb, torch.tensor([0, 0, 2])).item() == pytest.approx(expected, abs=1e-6)


def test_koleo_decreases_as_points_spread():
    def on_circle(angles):
        a = torch.tensor(angles)
        return torch.stack([a.cos(), a.sin()], dim=1)

    labels = torch.arange(3)
    crowded, spread = on_circle([0.0, 0.2, 0.4]), on_circle([0.0, 2.1, 4.2])
    assert koleo_loss(spread, labels) < koleo_loss(crowded, labels)


def test_batch_loss_adds_koleo_at_its_weight():
    emb = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    plain = batch_loss("ntxent", None, 0.1)(emb, labels)
    assert batch_loss("ntxent", None, 0.1, koleo=0.5)(emb, labels).item() == pytest.approx(
        plain.item() + 0.5 * koleo_loss(emb, labels).item(), rel=1e-6)
