"""UGPL formulas with hand-computed values (spec ugpl.md §10) and gradient routing through real tiny U-Nets."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from nnunet_ssl.losses.prototypes import class_prototypes
from nnunet_ssl.modules.features import DecoderFeatureTap
from nnunet_ssl.trainers.dual_base import PLAIN
from nnunet_ssl.trainers import ugpl
from nnunet_ssl.trainers.ugpl import (cosine_consistency, cross_reliable_losses, entropy_keep_mask,
                                      kl_rectified_cross_entropy, loser_is_b, numpy_percentile,
                                      prototype_alignment_loss, prototype_weight, rescaled_masked_cross_entropy,
                                      softmax_entropy, union_pseudo_labels)

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: thread start-up dominates and several engineers share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probs(*rows):
    """(N, C) rows of probabilities as a (1, C, N) map."""
    return torch.tensor(rows, dtype=torch.float32).t()[None]


# ---------------------------------------------------------------------------------------------- 1. entropy
def test_entropy_values_and_logits_are_not_entropy_input():
    h = softmax_entropy(probs((0.5, 0.5), (0.9, 0.1)))
    assert h[0].tolist() == pytest.approx([math.log(2), 0.325083], abs=TOL)
    logits = torch.tensor([[-3.0, 2.0, -0.5], [1.0, -4.0, 0.0]])[None]  # (1, C=2, 3), negative entries
    h = softmax_entropy(torch.softmax(logits, 1))
    assert torch.isfinite(h).all() and (h >= 0).all() and (h <= math.log(2) + 1e-6).all()


# ------------------------------------------------------------------------------------ 2. percentile and mask
H_A = torch.arange(10, dtype=torch.float32) / 10


@pytest.mark.parametrize("h_b, q, tau, kept, factor", [
    (H_A.flip(0), 20, 0.18, [0, 1, 8, 9], 2.5),
    (H_A.flip(0), 80, 0.72, list(range(10)), 1.0),
    (H_A, 20, 0.18, [0, 1], 5.0),
    (H_A, 80, 0.72, list(range(8)), 1.25),
])
def test_entropy_percentile_mask(h_b, q, tau, kept, factor):
    mask, tau_a, tau_b = entropy_keep_mask(H_A, h_b, q)
    assert float(tau_a) == pytest.approx(tau, abs=TOL) and float(tau_b) == pytest.approx(tau, abs=TOL)
    assert torch.nonzero(mask).squeeze(1).tolist() == kept
    assert mask.numel() / mask.sum().item() == pytest.approx(factor)


def test_voxel_at_threshold_is_uncertain():
    h = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    mask, tau, _ = entropy_keep_mask(h, h, 50)
    assert float(tau) == 2.0 and mask.tolist() == [True, True, False, False, False]


def test_percentile_matches_numpy_on_many_values():
    values = torch.rand(100_000, generator=torch.Generator().manual_seed(0))
    for q in (0, 20, 37.5, 80, 100):
        assert float(numpy_percentile(values, q)) == pytest.approx(np.percentile(values.numpy(), q), abs=1e-6)


def test_all_equal_entropies_keep_nothing_and_loss_is_zero():
    h = torch.full((10,), 0.3)
    mask, _, _ = entropy_keep_mask(h, h, 80)
    assert not mask.any()
    logits = torch.randn(1, 2, 10, requires_grad=True)
    loss = rescaled_masked_cross_entropy(logits, torch.ones(1, 10, dtype=torch.long), mask[None])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# -------------------------------------------------------------------------------------- 3. union pseudo-label
def test_union_pseudo_label_binary_and_multiclass():
    def onehot(labels, c=2):
        return F.one_hot(torch.tensor(labels), c).float().t()[None] * 0.9 + 0.05
    assert union_pseudo_labels(onehot([0, 1, 0, 1]), onehot([0, 0, 1, 1]))[0].tolist() == [0, 1, 1, 1]
    assert union_pseudo_labels(onehot([0], 4), onehot([3], 4)).item() == 3
    p_a = probs((0.1, 0.2, 0.7))  # argmax 2, confidence 0.7
    p_b = probs((0.1, 0.6, 0.3))  # argmax 1, confidence 0.6
    assert union_pseudo_labels(p_a, p_b).item() == 2
    assert union_pseudo_labels(p_b, p_a).item() == 2


# -------------------------------------------------------------------------------------- 4. L_u value, gradient
def test_unlabelled_loss_value_and_gradient():
    logits = torch.zeros(1, 2, 10, requires_grad=True)
    kept = torch.zeros(1, 10, dtype=torch.bool)
    kept[0, [0, 1, 8, 9]] = True
    loss = rescaled_masked_cross_entropy(logits, torch.ones(1, 10, dtype=torch.long), kept)
    assert loss.item() == pytest.approx(2.5 * math.log(2), abs=TOL)
    loss.backward()
    grad = logits.grad[0].t()  # (voxel, class)
    for v in range(10):
        expected = [0.3125, -0.3125] if v in (0, 1, 8, 9) else [0.0, 0.0]
        assert grad[v].tolist() == pytest.approx(expected, abs=TOL)
    # without the rescale: the plain mean over kept voxels
    assert rescaled_masked_cross_entropy(logits, torch.ones(1, 10, dtype=torch.long), kept,
                                         rescale=False).item() == pytest.approx(math.log(2), abs=TOL)


# ------------------------------------------------------------------------------------------------ 5. KL weights
def test_kl_weight_values_temperature_and_gradient_routing():
    teacher = torch.log(probs((0.8, 0.2))).requires_grad_(True)
    student = torch.zeros(1, 2, 1, requires_grad=True)
    loss, w = kl_rectified_cross_entropy(student, teacher)
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert kl == pytest.approx(0.192745, abs=1e-6)
    assert w.item() == pytest.approx(0.824692, abs=TOL)
    assert loss.item() == pytest.approx(0.764378, abs=TOL)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # analytic gradient w·∂CE + (1 − w·CE)·∂KL; at student (0, 0): ∂CE = p − onehot(0), ∂KL = p − p_t
    w_, ce = math.exp(-kl), math.log(2)
    expected = [w_ * (0.5 - 1) + (1 - w_ * ce) * (0.5 - 0.8), w_ * 0.5 + (1 - w_ * ce) * (0.5 - 0.2)]
    assert student.grad[0, :, 0].tolist() == pytest.approx(expected, abs=TOL)
    # a student equal to its teacher: KL 0, w 1
    same, w_same = kl_rectified_cross_entropy(torch.log(probs((0.8, 0.2))), torch.log(probs((0.8, 0.2))))
    assert w_same.item() == pytest.approx(1.0) and same.item() == pytest.approx(-math.log(0.8), abs=TOL)
    # two voxels together; the temperature has no effect
    both_t = torch.log(probs((0.8, 0.2), (0.8, 0.2)))
    both_s = torch.stack([torch.zeros(2), torch.log(torch.tensor([0.8, 0.2]))], 1)[None]
    for t in (0.1, 0.5, 2.0):
        assert kl_rectified_cross_entropy(both_s, both_t, temperature=t)[0].item() == pytest.approx(0.493761,
                                                                                                   abs=TOL)
    # unweighted: plain CE against the teacher's argmax
    assert kl_rectified_cross_entropy(both_s, both_t, weighting=False)[0].item() == pytest.approx(
        (math.log(2) - math.log(0.8)) / 2, abs=TOL)


# --------------------------------------------------------------------------------------------------- 6. cosine
def test_cosine_consistency():
    p_a = probs((1.0, 0.0)).requires_grad_(True)
    p_b = probs((0.5, 0.5)).requires_grad_(True)
    loss = cosine_consistency(p_a, p_b)
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=TOL)
    loss.backward()
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0
    assert cosine_consistency(p_b, p_b).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------- 7. L_cr
def test_cross_reliable_loss_values_routing_and_empty_mask():
    fg_a, fg_b = torch.tensor([0.7, 0.3, 0.65, 0.9]), torch.tensor([0.2, 0.8, 0.7, 0.95])
    p_a = torch.stack([1 - fg_a, fg_a])[None].requires_grad_(True)
    p_b = torch.stack([1 - fg_b, fg_b])[None].requires_grad_(True)
    y = torch.tensor([[1, 0, 0, 1]])
    l_a, l_b = cross_reliable_losses(p_a, p_b, y, 0.6)
    assert l_a.item() == pytest.approx(0.09, abs=TOL) and l_b.item() == pytest.approx(0.64, abs=TOL)
    l_a.backward()
    assert p_a.grad.abs().sum() > 0 and p_b.grad is None  # L_cr^A reaches network A only
    # voxels 0 and 1 excluded as invalid (ignore label) -> empty M -> 0, no NaN
    empty_a, _ = cross_reliable_losses(p_a, p_b, y, 0.6, valid=torch.tensor([[False, False, True, True]]))
    assert empty_a.item() == 0.0


# -------------------------------------------------------------------------------------------- 8. ramp, winner
def test_prototype_ramp_and_loser():
    assert prototype_weight(0, 100) == pytest.approx(6.738e-4, abs=1e-7)
    assert prototype_weight(50, 100) == pytest.approx(0.028650, abs=1e-6)
    assert prototype_weight(100, 100) == pytest.approx(0.1)
    assert prototype_weight(3000, 6000) == pytest.approx(0.028650, abs=1e-6)
    assert loser_is_b(0.3, 0.5) and not loser_is_b(0.5, 0.3)
    assert not loser_is_b(0.4, 0.4)  # tie: A loses


# ------------------------------------------------------------------------------------------ 9. prototype loss
def _proto_setup(bg_reliable=(0.0, 2.0)):
    """Features (1, 2, 5) of voxels: reliable fg (1,0), (3,0), reliable bg, candidates fg (1,2) and bg (0,5)."""
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], list(bg_reliable), [1.0, 2.0], [0.0, 5.0]]).t()[None]
    reliable = torch.tensor([[1, 1, 0, -1, -1]])
    candidates = torch.tensor([[-1, -1, -1, 1, 0]])
    return feats.clone().requires_grad_(True), reliable, candidates


def test_prototype_loss_value_and_code_sign():
    feats, reliable, candidates = _proto_setup()
    protos, counts = class_prototypes(feats, reliable, 2)
    assert protos.tolist() == [[0.0, 2.0], [2.0, 0.0]] and counts.tolist() == [1.0, 2.0]
    loss, stats = prototype_alignment_loss(feats, reliable, candidates, 2, sample_fraction=1.0)
    pull, push = 1.051462 + 1e-6, 0.540494
    assert loss.item() == pytest.approx(pull + push, abs=TOL)  # 1.591956, sep = 0 (d = √2 > m)
    assert stats["candidate_counts"].tolist() == [1.0, 1.0]
    code, _ = prototype_alignment_loss(feats, reliable, candidates, 2, sample_fraction=1.0,
                                       separation="code_pull", push_candidates=False)
    assert code.item() == pytest.approx(pull + math.sqrt(2), abs=TOL)  # 2.465676
    loss.backward()
    assert feats.grad[0, :, 3].abs().sum() > 0           # candidates learn
    assert feats.grad[0, :, :3].abs().sum().item() == 0  # anchors are detached when the hinge is inactive
    assert torch.isfinite(feats.grad).all()              # bg candidate sits exactly on its prototype


def test_prototype_separation_hinge_reaches_reliable_features():
    feats, reliable, candidates = _proto_setup(bg_reliable=(1.0, 1.0))
    only_sep, _ = prototype_alignment_loss(feats, reliable, candidates, 2, sample_fraction=1.0)
    d = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + 0.5)
    assert d == pytest.approx(0.765367, abs=1e-6)
    no_sep, _ = prototype_alignment_loss(feats, reliable, candidates, 2, sample_fraction=1.0, separation="none")
    assert (only_sep - no_sep).item() == pytest.approx(1 - d, abs=TOL)  # sep = 0.234633
    only_sep.backward()
    assert feats.grad[0, :, :3].abs().sum() > 0


def test_prototype_loss_skips_empty_classes():
    feats, reliable, candidates = _proto_setup()
    # no fg prototype: the fg candidate is skipped; bg candidate on its prototype, no other prototype to push from
    loss, _ = prototype_alignment_loss(feats, torch.tensor([[-1, -1, 0, -1, -1]]), candidates, 2,
                                       sample_fraction=1.0)
    assert loss.item() == pytest.approx(1e-6, abs=1e-7)
    # n_c = floor(0.5 · 1) = 0 for both classes: nothing remains -> 0
    zero, _ = prototype_alignment_loss(feats, reliable, candidates, 2, sample_fraction=0.5)
    assert zero.item() == 0.0 and zero.requires_grad


# --------------------------------------------------------------------------- 10./11. networks, gradient routing
PLANS_KWARGS = {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
                "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [1, 1],
                "n_conv_per_stage_decoder": [1], "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


def build_pair(trainer_class=ugpl.nnUNetTrainerUGPL, deep_supervision=False, num_classes=2):
    cm = SimpleNamespace(network_arch_class_name=PLAIN, network_arch_init_kwargs=PLANS_KWARGS,
                         network_arch_init_kwargs_req_import=["conv_op", "norm_op", "dropout_op", "nonlin"])
    return trainer_class.build_network_architecture(None, cm, 1, num_classes, deep_supervision)


def test_pair_is_plain_and_resnet34_like_resenc():
    torch.manual_seed(0)
    pair = build_pair()
    assert type(pair.net_a).__name__ == "PlainConvUNet" and type(pair.net_b).__name__ == "ResidualEncoderUNet"
    assert [len(s.blocks) for s in pair.net_b.encoder.stages] == [1, 3]  # nnU-Net's ResEnc preset, truncated
    same = build_pair(ugpl.nnUNetTrainerUGPL_sameArch)
    assert type(same.net_b).__name__ == "PlainConvUNet"
    w_a, w_b = same.net_a.state_dict(), same.net_b.state_dict()
    assert any(not torch.equal(w_a[k], w_b[k]) for k in w_a)  # two independent initialisations


def test_eval_output_is_log_of_averaged_softmax():
    torch.manual_seed(0)
    for ds in (False, True):
        pair = build_pair(deep_supervision=ds).eval()
        x = torch.randn(2, 1, 16, 16)
        with torch.no_grad():
            out, za, zb = pair(x), pair.net_a(x), pair.net_b(x)
        if ds:
            assert isinstance(out, list) and len(out) == len(za)
            out, za, zb = out[0], za[0], zb[0]
        assert torch.allclose(torch.softmax(out, 1), (torch.softmax(za, 1) + torch.softmax(zb, 1)) / 2, atol=1e-6)
    copy = build_pair()
    copy.load_state_dict(pair.state_dict())
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in pair.state_dict().items())


def make_trainer(cls=ugpl.nnUNetTrainerUGPL, **attrs):
    """A trainer object for ugpl_terms only (no plans/dataset): the attributes that method reads."""
    trainer = object.__new__(cls)
    trainer.ssl_step, trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.is_ddp = 100, 10, 10, False
    for k, v in attrs.items():
        setattr(trainer, k, v)
    return trainer


def forward_pair(seed=0, n_l=2, n_u=2, num_classes=2):
    torch.manual_seed(seed)
    pair = build_pair(num_classes=num_classes).train()
    taps = DecoderFeatureTap(pair.net_a, [-1]), DecoderFeatureTap(pair.net_b, [-1])
    x = torch.randn(n_l + n_u, 1, 16, 16)
    z_a, z_b = pair.net_a(x), pair.net_b(x)
    seg = torch.randint(0, num_classes, (n_l, 16, 16))
    return pair, z_a, z_b, taps[0].pop()[-1], taps[1].pop()[-1], seg


def grad_norms(pair):
    return [sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None)
            for net in (pair.net_a, pair.net_b)]


def test_unlabelled_pseudo_label_loss_trains_both_networks():
    pair, z_a, z_b, f_a, f_b, seg = forward_pair()
    losses, diag = make_trainer().ugpl_terms(z_a, z_b, f_a, f_b, seg)
    assert 0.79 <= diag["kept_share"].item() < 1.0  # q = 80: the doubly-uncertain ≤ 20 % are dropped
    losses["unsup"].backward()
    assert all(g > 0 for g in grad_norms(pair))


def test_pseudo_label_dice_is_over_every_voxel_and_kept_dice_over_the_entropy_filter():
    """The benchmark table compares pseudo_label_dice across trainers: like theirs it covers every unlabelled voxel;
    the entropy-kept voxels (the CE term's) get their own key."""
    pair, z_a, z_b, f_a, f_b, seg = forward_pair()
    truth = torch.randint(0, 2, (2, 16, 16))
    _, diag = make_trainer().ugpl_terms(z_a, z_b, f_a, f_b, seg, truth_u=truth)
    with torch.no_grad():
        p_a, p_b = torch.softmax(z_a[2:], 1), torch.softmax(z_b[2:], 1)
        pseudo = union_pseudo_labels(p_a, p_b)
        kept, _, _ = entropy_keep_mask(softmax_entropy(p_a), softmax_entropy(p_b), 80)

    def fg_dice(mask):
        p, t = (pseudo == 1) & mask, (truth == 1) & mask
        return 2.0 * (p & t).sum().item() / (p.sum() + t.sum()).item()

    every, only_kept = fg_dice(torch.ones_like(kept)), fg_dice(kept)
    assert every != pytest.approx(only_kept)  # the test tells the two apart
    assert diag["pseudo_label_dice"].item() == pytest.approx(every, abs=TOL)
    assert diag["pseudo_label_dice_kept"].item() == pytest.approx(only_kept, abs=TOL)


def test_prototype_loss_trains_the_loser_only():
    pair, z_a, z_b, f_a, f_b, seg = forward_pair()
    losses, diag = make_trainer(proto_sample_fraction=1.0).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    assert diag["proto_weight"].item() == pytest.approx(0.1) and losses["proto"].item() > 0
    assert diag["proto_candidates_c0"] + diag["proto_candidates_c1"] > 0
    losses["proto"].backward()
    g_a, g_b = grad_norms(pair)
    loser, winner = (g_b, g_a) if diag["loser_is_b"].item() else (g_a, g_b)
    assert loser > 0 and winner == 0.0


def test_kl_direction_routing_and_cosine_reaches_both():
    pair, z_a, z_b, f_a, f_b, seg = forward_pair()
    losses, _ = make_trainer(ugpl.nnUNetTrainerUGPL_klOneWay).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    losses["kl"].backward(retain_graph=True)
    g_a, g_b = grad_norms(pair)
    assert g_a == 0.0 and g_b > 0
    pair.zero_grad(set_to_none=True)
    losses, _ = make_trainer().ugpl_terms(z_a, z_b, f_a, f_b, seg)
    losses["kl"].backward(retain_graph=True)
    assert all(g > 0 for g in grad_norms(pair))
    pair.zero_grad(set_to_none=True)
    losses["cos"].backward()
    assert all(g > 0 for g in grad_norms(pair))


@pytest.mark.parametrize("variant", [c for n, c in vars(ugpl).items()
                                     if n.startswith("nnUNetTrainerUGPL_") and not n.endswith("tiny")])
def test_every_variant_gives_finite_terms_and_gradients(variant):
    pair, z_a, z_b, f_a, f_b, seg = forward_pair(num_classes=3)
    truth = torch.randint(0, 3, (2, 16, 16))
    losses, diag = make_trainer(variant).ugpl_terms(z_a, z_b, f_a, f_b, seg, truth_u=truth)
    total = sum(losses.values())
    assert set(losses) == {"cr", "unsup", "kl", "cos", "proto"} and torch.isfinite(total)
    total.backward()
    assert all(math.isfinite(g) and g > 0 for g in grad_norms(pair))
    assert 0 <= diag["pseudo_label_dice"].item() <= 1
    if variant is ugpl.nnUNetTrainerUGPL_noEntropyFilter:
        assert diag["kept_share"].item() == 1.0 and losses["proto"].item() == 0.0
    if variant is ugpl.nnUNetTrainerUGPL_noKL:
        assert losses["kl"].item() == 0.0
    if variant is ugpl.nnUNetTrainerUGPL_klUnweighted:
        assert diag["kl_weight_mean"].item() == 1.0


def test_paper_schedule_by_default_and_the_sigmoid_ramp_variant():
    """Default (the paper's schedule): L_u, KL and cosine at full weight from step 0, the prototype weight ramped
    over all of training. `_sigmoidRamp` (the default before 0.2): the first three enter with the sigmoid ramp's
    e^{-5} at step 0 and at full weight after 10 % of training; the prototype weight is full after 40 %."""
    pair, z_a, z_b, f_a, f_b, seg = forward_pair()
    total = 100
    ramped = ugpl.nnUNetTrainerUGPL_sigmoidRamp
    late, _ = make_trainer(ramped, ssl_step=10, num_epochs=10).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    early, diag = make_trainer(ramped, ssl_step=0, num_epochs=10).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    for term in ("unsup", "kl", "cos"):
        assert late[term].item() > 0
        assert early[term].item() == pytest.approx(math.exp(-5) * late[term].item(), rel=1e-4), term
    for paper_trainer in (ugpl.nnUNetTrainerUGPL, ugpl.nnUNetTrainerUGPL_noRamp):
        paper, _ = make_trainer(paper_trainer, ssl_step=0, num_epochs=10).ugpl_terms(z_a, z_b, f_a, f_b, seg)
        for term in ("unsup", "kl", "cos"):
            assert paper[term].item() == pytest.approx(late[term].item(), rel=1e-5), term
    _, diag = make_trainer(ramped, ssl_step=int(0.4 * total), num_epochs=10).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    assert diag["proto_weight"].item() == pytest.approx(0.1)
    _, diag = make_trainer(ssl_step=int(0.4 * total), num_epochs=10).ugpl_terms(z_a, z_b, f_a, f_b, seg)
    assert diag["proto_weight"].item() == pytest.approx(0.1 * math.exp(-5 * 0.6 ** 2))
