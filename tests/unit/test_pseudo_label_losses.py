import math

import pytest
import torch

from nnunet_ssl.diagnostics import mean_foreground_dice, term_gradient_norms
from nnunet_ssl.losses.contrastive import info_nce
from nnunet_ssl.losses.pseudo_label import confidence_pseudo_labels, weighted_cross_entropy
from nnunet_ssl.modules.dual import average_log_probs


def test_confidence_pseudo_labels():
    # two voxels: logits (ln 3, 0) -> p = (0.75, 0.25); (0, 0) -> (0.5, 0.5)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]).t().reshape(1, 2, 2)
    labels, conf, reliable = confidence_pseudo_labels(logits, 0.7)
    assert labels.tolist() == [[0, 0]]
    assert conf[0].tolist() == pytest.approx([0.75, 0.5])
    assert reliable.tolist() == [[True, False]]


def test_weighted_cross_entropy_hand_computed():
    logits = torch.zeros(1, 2, 3)          # p = 0.5 everywhere: CE = ln 2 per voxel
    labels = torch.tensor([[0, 1, -1]])    # last voxel ignored
    weight = torch.tensor([[1.0, 0.0, 1.0]])
    # (ln2 * 1 + ln2 * 0) / 2 valid voxels
    assert weighted_cross_entropy(logits, labels, weight).item() == pytest.approx(math.log(2) / 2)
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx(math.log(2))


def test_mean_foreground_dice():
    pred = torch.tensor([1, 1, 0, 2, 0])
    truth = torch.tensor([1, 0, 0, 2, 2])
    # class 1: 2*1/(2+1) = 2/3; class 2: 2*1/(1+2) = 2/3
    assert mean_foreground_dice(pred, truth, 3).item() == pytest.approx(2 / 3)
    assert math.isnan(mean_foreground_dice(torch.zeros(3), torch.zeros(3), 3).item())


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])         # cos 1
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # cos 0, -1
    t = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    assert info_nce(a, p, n, t).item() == pytest.approx(expected, rel=1e-6)
    # per-anchor negatives and a mask removing the second negative
    mask = torch.tensor([[True, False]])
    expected_masked = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert info_nce(a, p, n[None], t, mask).item() == pytest.approx(expected_masked, rel=1e-6)
    empty = info_nce(torch.zeros(0, 2, requires_grad=True), torch.zeros(0, 2), n, t)
    assert empty.item() == 0 and empty.requires_grad


def test_average_log_probs_is_log_of_mean_probability():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mean_p = (a.softmax(1) + b.softmax(1)) / 2
    assert torch.allclose(average_log_probs(a, b).exp(), mean_p, atol=1e-6)
    assert torch.allclose(average_log_probs(a, b).softmax(1), mean_p, atol=1e-6)


def test_term_gradient_norms_hand_values():
    # two parameters; term a = 3·w1 + 4·w2 (gradient (3, 4), norm 5); term b = w1² at w1 = 1 (gradient (2, 0),
    # norm 2); term c reaches no parameter (a constant): 0
    w1, w2 = torch.tensor(1.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True)
    frozen = torch.tensor(7.0)  # no requires_grad: left out
    losses = {"a": 3 * w1 + 4 * w2, "b": w1 ** 2, "c": torch.tensor(0.5)}
    norms = term_gradient_norms(losses, [w1, w2, frozen])
    assert norms == pytest.approx({"a": 5.0, "b": 2.0, "c": 0.0})
    # the graph is kept: training can still back-propagate the sum afterwards
    sum(losses.values()).backward()
    assert w1.grad.item() == pytest.approx(5.0) and w2.grad.item() == pytest.approx(4.0)
