"""CDR-Net pieces with hand-computed values (spec cdr.md §11) and gradient routing through both networks."""
import math
from types import SimpleNamespace

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch.nn import functional as F

from nnunet_ssl.modules.dual import DualNetwork
from nnunet_ssl.trainers import cdr
from nnunet_ssl.trainers.base import first_output
from nnunet_ssl.trainers.cdr import (disagreement_review_loss, disagreement_weights, flatten_regions, leader_is_a,
                                     negative_share, nnUNetTrainerCDR, nnUNetTrainerCDR_singleNetwork,
                                     patch_scaled_region_size, pool_regions, pool_regions_from_coarser,
                                     region_grid, region_overlap, regional_info_nce,
                                     regional_kd_target, sharpen, squared_dice_loss, symmetric_region_nce,
                                     voxel_disagreement)
from nnunet_ssl.trainers.dual_base import PLAIN


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tensors here are tiny: intra-op threading only adds overhead (seconds per conv on a busy 2-core machine)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ MCF base terms
def test_squared_dice_loss_values():
    g = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0]).view(1, 1, 5)  # class-1 map; voxel 0 is background
    onehot = torch.cat((1 - g, g), 1)
    assert squared_dice_loss(onehot, onehot).item() == pytest.approx(0.0, abs=1e-7)
    # p = 0.5 on the 4 foreground voxels: 1 − (4 + ε)/(5 + ε)
    p = torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5]).view(1, 1, 5)
    expected = 1 - (4 + 1e-5) / (1 + 4 + 1e-5)
    assert squared_dice_loss(torch.cat((1 - p, p), 1), onehot).item() == pytest.approx(expected, rel=1e-6)


def test_leader_selection_and_tie_rule():
    assert leader_is_a(torch.tensor(0.3), torch.tensor(0.2)).item() == 0.0  # B has the lower Dice loss
    assert leader_is_a(torch.tensor(0.2), torch.tensor(0.3)).item() == 1.0
    assert leader_is_a(torch.tensor(0.25), torch.tensor(0.25)).item() == 1.0  # A wins ties


def test_disagreement_review_loss():
    fg_a, fg_b = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])
    disagree = fg_a != fg_b  # binary XOR
    assert disagree.tolist() == [False, True, True, False]
    p_fg = torch.tensor([0.9, 0.8, 0.3, 0.1])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    probs = torch.stack((1 - p_fg, p_fg))[None]  # (1, 2, 4)
    onehot = torch.stack((1 - y, y))[None]
    # ((0.8 − 1)² + (0.3 − 0)²) / 2
    assert disagreement_review_loss(probs, onehot, disagree[None]).item() == pytest.approx(0.065, rel=1e-6)
    zero = disagreement_review_loss(probs, onehot, torch.zeros(1, 4, dtype=torch.bool))
    assert zero.item() == 0.0 and not torch.isnan(zero)


def test_sharpen_t01():
    p = torch.tensor([[0.6, 0.4]], requires_grad=True)
    s = sharpen(p, 0.1)
    expected = 0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10)
    assert s[0, 0].item() == pytest.approx(expected, rel=1e-5) and expected == pytest.approx(0.98295, abs=1e-5)
    assert not s.requires_grad
    # no underflow to NaN for tiny probabilities
    assert torch.isfinite(sharpen(torch.tensor([[1e-30, 1e-31]]), 0.1)).all()


# ------------------------------------------------------------------------------------------------- regions
def test_region_grid_geometry():
    assert region_grid((112, 112, 80), 16) == (7, 7, 5)  # 245 regions, the spec's LA patch
    assert math.prod(region_grid((112, 112, 80), 16)) == 245
    assert region_grid((20, 32), 16) == (2, 2)  # a partial border window is a region
    assert region_grid((8, 32, 32), 16) == (1, 2, 2)  # window clipped to a short axis
    with pytest.raises(ValueError, match="region_size"):
        region_grid((32, 32, 32), (16, 16))


def test_patch_scaled_region_size_keeps_the_spec_grid():
    assert patch_scaled_region_size((112, 112, 80)) == 16  # the spec's patch: its 16-voxel windows, 245 regions
    assert region_grid((112, 112, 80), patch_scaled_region_size((112, 112, 80))) == (7, 7, 5)
    assert patch_scaled_region_size((16, 28, 36)) == 6  # LA at 3.5 mm: ceil(36 / 7)
    assert region_grid((16, 28, 36), 6) == (3, 5, 6)  # 90 regions per image instead of 6 with a fixed 16
    assert region_grid((16, 28, 36), 16) == (1, 2, 3)
    assert patch_scaled_region_size((256, 224)) == 37  # 2D
    assert patch_scaled_region_size((4, 5, 6)) == 1
    with pytest.raises(ValueError, match="regions_along_longest_axis"):
        patch_scaled_region_size((16, 28, 36), 0)


def test_negative_share_hand_values():
    # 3 background regions see 1 of their 3 others as a negative, the foreground one all 3: (3 * 1/3 + 1) / 4
    assert negative_share(4, torch.tensor([0, 0, 0, 1]), 2).item() == pytest.approx(0.5)
    assert negative_share(4, torch.tensor([0, 0, 0, 0]), 2).item() == 0.0  # one class: no negatives at all
    assert negative_share(3, torch.tensor([0, 1, 2]), 3).item() == pytest.approx(1.0)
    assert negative_share(4, None).item() == 1.0  # no class masking: every other region
    assert negative_share(1, None).item() == 0.0


def test_pool_regions_constant_and_partial_windows():
    x = torch.full((2, 3, 20, 32, 16), 0.7)
    pooled = pool_regions(x, 16)
    assert pooled.shape == (2, 3, 2, 2, 1)
    assert torch.allclose(pooled, torch.full_like(pooled, 0.7), atol=1e-4)  # partial windows too (fp32 sums)
    # a partial window averages only the voxels it holds
    y = torch.zeros(1, 1, 20)
    y[..., 16:] = 1.0
    assert pool_regions(y[..., None], (16, 1))[0, 0, :, 0].tolist() == [0.0, 1.0]


def test_region_overlap_hand_values():
    # 6 fine voxels, 3 coarse ones (2 fine each), windows of 3: window 0 = [0, 3) holds 2 voxels of coarse 0 and 1
    # of coarse 1; window 1 = [3, 6) holds 1 of coarse 1 and 2 of coarse 2
    w = region_overlap(6, 3, 3)
    assert torch.allclose(w, torch.tensor([[2 / 3, 0.0], [1 / 3, 1 / 3], [0.0, 2 / 3]]))
    # a partial border window (8 fine voxels, windows of 3: [6, 8)) averages the voxels it holds: coarse 1 = [4, 8)
    w = region_overlap(8, 2, 3)
    assert torch.allclose(w, torch.tensor([[1.0, 1 / 3, 0.0], [0.0, 2 / 3, 1.0]]))


@pytest.mark.parametrize("coarse, fine, region", [((4, 7, 9), (16, 28, 36), 6), ((8, 8), (8, 8), 3),
                                                 ((2, 4, 4), (8, 16, 16), (3, 5, 16))])
def test_pool_regions_from_coarser_equals_pooling_the_upsampled_map(coarse, fine, region):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *coarse)
    upsampled = F.interpolate(x, size=fine, mode="nearest")
    expected = pool_regions(upsampled, region)
    got = pool_regions_from_coarser(x, fine, region)
    assert got.shape == expected.shape == (2, 3, *region_grid(fine, region))
    assert torch.allclose(got, expected, atol=1e-5)


def test_region_pairing_is_positional_and_same_in_both_networks():
    # a map whose value says where the voxel is: region index r at (b, window) must be that window of image b
    b, grid = 2, (2, 2, 2)
    x = torch.zeros(b, 1, 8, 8, 8)
    for i in range(b):
        for r in range(8):
            gz, gy, gx = r // 4, (r // 2) % 2, r % 2
            x[i, 0, gz * 4:(gz + 1) * 4, gy * 4:(gy + 1) * 4, gx * 4:(gx + 1) * 4] = 10 * i + r
    rows = flatten_regions(pool_regions(x, 4))
    assert rows.shape == (b * 8, 1)
    assert rows[:, 0].tolist() == [10.0 * i + r for i in range(b) for r in range(8)]
    # two-channel features keep channels as columns
    two = flatten_regions(pool_regions(torch.cat((x, -x), 1), 4))
    assert torch.equal(two[:, 1], -two[:, 0])


def test_disagreement_weights():
    # region 0: identical predictions; region 1: |p_A − p_B| = 0.5 everywhere
    p_a = torch.tensor([0.5, 0.5, 0.9, 0.9]).view(1, 1, 4)
    p_b = torch.tensor([0.5, 0.5, 0.4, 0.4]).view(1, 1, 4)
    probs_a, probs_b = torch.cat((1 - p_a, p_a), 1), torch.cat((1 - p_b, p_b), 1)
    d = flatten_regions(pool_regions(voxel_disagreement(probs_a, probs_b)[..., None], (2, 1)))[:, 0]
    assert disagreement_weights(d, 1.0).tolist() == pytest.approx([1.0, 1.5])
    assert disagreement_weights(d, 2.0).tolist() == pytest.approx([1.0, 2.0])
    xor = flatten_regions(pool_regions(voxel_disagreement(probs_a, probs_b, "argmax")[..., None], (2, 1)))[:, 0]
    assert xor.tolist() == [0.0, 1.0]  # 0.5 vs 0.5 ties argmax to class 0 in both; 0.9 vs 0.4 differ
    with pytest.raises(ValueError, match="disagreement_measure"):
        voxel_disagreement(probs_a, probs_b, "entropy")


# ------------------------------------------------------------------------------------------------ InfoNCE
def test_inter_info_nce_hand_value_orthogonal_regions():
    n = 245
    z = torch.eye(n)  # identical in both nets, regions mutually orthogonal
    nce_ab, nce_ba = symmetric_region_nce(z, z.clone(), 0.1)
    expected = math.log(1 + (n - 1) * math.exp(-10))  # positive cos 1, negatives cos 0, τ = 0.1
    assert expected == pytest.approx(0.011017, abs=1e-6)
    assert nce_ab.item() == pytest.approx(expected, rel=1e-4) and nce_ba.item() == pytest.approx(expected, rel=1e-4)
    # swapping two regions in one net breaks the positional pairing: the loss rises sharply
    swapped = z.clone()[torch.tensor([1, 0] + list(range(2, n)))]
    # anchors 0 and 1: positive cos 0, one negative cos 1, 243 negatives cos 0 -> log(244 + e^10) each
    expected_swapped = (2 * math.log(244 + math.exp(10)) + (n - 2) * expected) / n
    loss = regional_info_nce(z, swapped, 0.1).item()
    assert loss == pytest.approx(expected_swapped, rel=1e-4) and loss > 5 * expected


def test_info_nce_small_hand_example_with_weights():
    # 2 regions in 2D: anchor 0 = (1,0), its positive (1,0), the other region (0,1); anchor 1 sees cos 0.6 / 0.8
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    l0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(8)))  # pos cos 1, neg cos 0.8
    l1 = -math.log(math.exp(6) / (math.exp(6) + math.exp(0)))    # pos cos 0.6, neg cos 0
    assert regional_info_nce(a, t, 0.1).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    w = torch.tensor([1.0, 1.5])
    assert regional_info_nce(a, t, 0.1, w).item() == pytest.approx((l0 + 1.5 * l1) / 2, rel=1e-5)


def test_stop_gradient_routing():
    torch.manual_seed(0)
    za, zb = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    # 'targets': the A->B direction reaches only A, B->A only B
    ab, ba = symmetric_region_nce(za, zb, 0.1, stop_gradient="targets")
    ga = torch.autograd.grad(ab, (za, zb), allow_unused=True)
    assert ga[0].abs().sum() > 0 and ga[1] is None
    gb = torch.autograd.grad(ba, (za, zb), allow_unused=True)
    assert gb[0] is None and gb[1].abs().sum() > 0
    # 'leader' with A leading: A gets no gradient from either direction, B gets some
    ab, ba = symmetric_region_nce(za, zb, 0.1, stop_gradient="leader", lead_a=torch.tensor(1.0))
    g = torch.autograd.grad(ab + ba, (za, zb))
    assert g[0].abs().sum() == 0 and g[1].abs().sum() > 0
    ab, ba = symmetric_region_nce(za, zb, 0.1, stop_gradient="leader", lead_a=torch.tensor(0.0))
    g = torch.autograd.grad(ab + ba, (za, zb))
    assert g[0].abs().sum() > 0 and g[1].abs().sum() == 0
    with pytest.raises(ValueError, match="inter_stop_gradient"):
        symmetric_region_nce(za, zb, 0.1, stop_gradient="sometimes")


# ------------------------------------------------------------------------------------- the trainer's losses
NUM_CLASSES = 3


def _tiny_arch():
    return SimpleNamespace(
        network_arch_class_name=PLAIN,
        network_arch_init_kwargs=dict(
            n_stages=3, features_per_stage=[4, 8, 8], conv_op="torch.nn.modules.conv.Conv3d",
            kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1],
            n_conv_per_stage_decoder=[1, 1], conv_bias=True,
            norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU",
            nonlin_kwargs={"inplace": True}),
        network_arch_init_kwargs_req_import=["conv_op", "norm_op", "dropout_op", "nonlin"])


def bare_trainer(cls, **attrs):
    """A CDR trainer without nnU-Net's plans/dataset plumbing: networks, heads, taps and the DS loss only."""
    trainer_cls = type("Bare" + cls.__name__, (cls,), dict(attrs))
    t = object.__new__(trainer_cls)
    t.device = torch.device("cpu")
    t.network = trainer_cls.build_network_architecture(None, _tiny_arch(), 1, NUM_CLASSES, True)
    t.label_manager = SimpleNamespace(has_ignore_label=False, ignore_label=None)
    t.loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                                   dice_class=MemoryEfficientSoftDiceLoss), [1.0, 0.5])
    t.ssl_step, t.num_epochs, t.num_iterations_per_epoch = 0, 1, 10
    t._compiled_modules, t._compile_modules = {}, None
    t._do_i_compile = lambda: False
    t.extra_modules = torch.nn.ModuleDict(t.build_extra_modules())
    t._setup_feature_taps()
    t.leader_counts = {"a": 0, "b": 0}
    return t


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    data_l, data_u = torch.randn(2, 1, 8, 8, 8, generator=g), torch.randn(2, 1, 8, 8, 8, generator=g)
    seg = torch.randint(0, NUM_CLASSES, (2, 1, 8, 8, 8), generator=g).float()
    target_l = [seg, seg[:, :, ::2, ::2, ::2]]
    return data_l, target_l, data_u


def _grad_norm(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_compute_losses_reaches_both_networks_and_heads():
    torch.manual_seed(0)
    t = bare_trainer(nnUNetTrainerCDR, unsup_rampup=0.0, region_size=4)
    losses, diag = t.compute_losses(*_batch(), truth_u=None)
    assert set(losses) == {"sup", "sup_b", "review", "cons", "rkd", "inter", "intra", "intra_kd"}
    assert all(torch.isfinite(v) and v.item() >= 0 for v in losses.values())
    assert diag["a_led"].item() in (0.0, 1.0) and 0.0 <= diag["agreement"].item() <= 1.0
    sum(losses.values()).backward()
    for name in ("net_a", "net_b"):
        assert _grad_norm(getattr(t.student, name)) > 0, name
    for name in ("head_a", "head_b"):
        assert _grad_norm(t.extra_modules[name]) > 0, name


def _mcf_dice_loss_by_hand(net, data_l, seg):
    """MCF's squared-denominator Dice loss of one network on the labelled images, written out here (not the
    code's function): 1 − (2Σpg + ε)/(Σp² + Σg² + ε) per foreground class over the batch, averaged."""
    with torch.no_grad():
        p = torch.softmax(first_output(net(data_l)).float(), 1)
    g = F.one_hot(seg[:, 0].long(), NUM_CLASSES).movedim(-1, 1).float()
    losses = [1 - (2 * (p[:, c] * g[:, c]).sum() + 1e-5) / ((p[:, c] ** 2).sum() + (g[:, c] ** 2).sum() + 1e-5)
              for c in range(1, NUM_CLASSES)]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("spoiled", ["net_a", "net_b"])
@pytest.mark.parametrize("term", ["cons", "rkd"])
def test_consistency_and_regional_kd_only_train_the_non_leader(term, spoiled):
    """The leader is decided here from each network's own labelled Dice loss (computed by hand, not read from the
    trainer's diagnostics); one network is spoiled so that the other must lead. Swapping the two Dice losses in
    the leader test, or the directions of the terms, sends the gradient to the wrong network."""
    torch.manual_seed(1)
    t = bare_trainer(nnUNetTrainerCDR, unsup_rampup=0.0, region_size=4, dropout_p=0.0)
    with torch.no_grad():  # a spoiled network predicts the inverse of its logits: far worse than the other
        getattr(t.student, spoiled).decoder.seg_layers[-1].weight.mul_(-50)
    data_l, target_l, data_u = _batch(1)
    dice_a = _mcf_dice_loss_by_hand(t.student.net_a, data_l, target_l[0])
    dice_b = _mcf_dice_loss_by_hand(t.student.net_b, data_l, target_l[0])
    leader, other = ("net_a", "net_b") if dice_a <= dice_b else ("net_b", "net_a")
    assert other == spoiled
    losses, _ = t.compute_losses(data_l, target_l, data_u, truth_u=None)
    losses[term].backward()
    assert _grad_norm(getattr(t.student, leader)) == 0
    assert _grad_norm(getattr(t.student, other)) > 0


def test_intra_terms_are_weighted_by_the_ramped_contrast_weight():
    """λ_c(t) multiplies both intra terms (InfoNCE and KD): the same step with λ_c max 0.1 and 0.3 gives 3x the
    terms; at step 0 of a ramp over 40 % of 10 iterations the weight is 0.1·exp(−5), at step 2 0.1·exp(−1.25)."""
    def intra_terms(step=0, **attrs):
        torch.manual_seed(5)
        t = bare_trainer(nnUNetTrainerCDR, region_size=4, mask_same_class_negatives=False, **attrs)
        t.ssl_step = step
        losses, diag = t.compute_losses(*_batch(5), truth_u=None)
        return losses["intra"].item(), losses["intra_kd"].item(), diag["contrast_weight"].item()

    base = intra_terms(unsup_rampup=0.0, contrast_weight=0.1)
    tripled = intra_terms(unsup_rampup=0.0, contrast_weight=0.3)
    assert base[0] > 0 and base[1] > 0
    assert tripled[0] == pytest.approx(3 * base[0], rel=1e-5) and tripled[1] == pytest.approx(3 * base[1], rel=1e-5)
    ramp0 = intra_terms(unsup_rampup=0.4, contrast_weight=0.1)
    assert ramp0[2] == pytest.approx(0.1 * math.exp(-5), rel=1e-6)
    assert ramp0[0] == pytest.approx(base[0] * math.exp(-5), rel=1e-5)
    assert ramp0[1] == pytest.approx(base[1] * math.exp(-5), rel=1e-5)
    ramp2 = intra_terms(step=2, unsup_rampup=0.4, contrast_weight=0.1)
    assert ramp2[0] == pytest.approx(base[0] * math.exp(-1.25), rel=1e-5)


def test_intra_regional_kd_hand_value():
    """One region of two voxels, two classes, β = 1, T = 0.1. Clean p_fg = (0.6, 0.2), noisy p_fg = (0.5, 0.4).
    Sharpened clean fg: 0.6¹⁰/(0.6¹⁰ + 0.4¹⁰) = 0.982954 and 0.2¹⁰/(0.2¹⁰ + 0.8¹⁰) = 9.5367e-7; target fg =
    their mean 0.491477, bg 0.508523; noisy region fg 0.45, bg 0.55. Disagreement ½Σ|Δ| = (0.1, 0.2), mean 0.15,
    w = 1.15. Loss = 1.15 · mean over classes of (0.45 − 0.491477)² = 1.15 · 0.00172034."""
    t = bare_trainer(nnUNetTrainerCDR, region_size=2)
    clean_fg, noisy_fg = torch.tensor([0.6, 0.2]), torch.tensor([0.5, 0.4])
    clean = torch.stack((1 - clean_fg, clean_fg)).view(1, 2, 1, 1, 2)
    noisy = torch.stack((1 - noisy_fg, noisy_fg)).view(1, 2, 1, 1, 2).requires_grad_()
    target_fg = (0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10) + 0.2 ** 10 / (0.2 ** 10 + 0.8 ** 10)) / 2
    expected = 1.15 * (0.45 - target_fg) ** 2
    loss = t._intra_regional_kd(clean, noisy, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert noisy.grad.abs().sum() > 0  # the noisy pass is the student; the clean target is a constant


def test_training_dropout_acts_in_training_only_and_leaves_the_export_unchanged():
    torch.manual_seed(6)
    t = bare_trainer(nnUNetTrainerCDR, region_size=4)
    net = t.student.net_a
    plain = bare_trainer(nnUNetTrainerCDR, region_size=4, dropout_p=0.0).student.net_a
    plain.load_state_dict(net.state_dict())
    assert net.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(1, 1, 8, 8, 8)
    net.train(), plain.train()
    with torch.no_grad():
        assert not torch.allclose(first_output(net(x)), first_output(net(x)))  # two stochastic passes
        assert torch.allclose(first_output(plain(x)), first_output(plain(x)))
        net.eval(), plain.eval()
        assert torch.equal(first_output(net(x)), first_output(plain(x)))
    assert cdr.add_training_dropout(plain, 0.0) is None
    with pytest.raises(ValueError, match="dropout_p"):
        cdr.add_training_dropout(plain, 1.0)


def test_inter_and_intra_terms_reach_each_network():
    torch.manual_seed(2)
    for term in ("inter", "intra"):
        # every region of these random networks has the same dominant class, so same-class masking would leave
        # no negatives (and no gradient): this test is about routing, not about which regions are negatives
        t = bare_trainer(nnUNetTrainerCDR, unsup_rampup=0.0, region_size=4, mask_same_class_negatives=False)
        losses, _ = t.compute_losses(*_batch(2), truth_u=None)
        losses[term].backward()
        assert _grad_norm(t.student.net_a) > 0 and _grad_norm(t.student.net_b) > 0, term


def _atrium_like_forward(shape):
    """Stand-in for both networks: a confident 8 x 12 x 16 foreground blob (about 10 % of a 16 x 28 x 36 patch,
    like the atrium in LA's 3.5 mm patches) and random decoder features."""
    fg = torch.zeros(1, 1, *shape)
    fg[..., 4:12, 8:20, 10:26] = 1

    def forward(k, x):
        n = x.shape[0]
        logits = 4 * torch.cat((1 - fg, fg, torch.zeros_like(fg)), 1).expand(n, -1, -1, -1, -1)
        feats = torch.randn(n, 4, *shape)
        bottleneck = torch.randn(n, 8, *(d // 4 for d in shape))
        return [logits, logits[:, :, ::2, ::2, ::2]], feats, bottleneck
    return forward, fg


@pytest.mark.parametrize("region_size, alive", [(None, True), (16, False)])
def test_regional_contrast_is_alive_on_a_small_structure_with_patch_scaled_regions(region_size, alive):
    # LA at 3.5 mm: with fixed 16-voxel windows no region is foreground-dominant, same-class masking leaves no
    # negative and both InfoNCE terms are exactly 0 (the CDR row's logs); windows scaled with the patch keep them
    shape = (16, 28, 36)
    torch.manual_seed(3)
    t = bare_trainer(nnUNetTrainerCDR, unsup_rampup=0.0, region_size=region_size)
    t._forward_with_features, fg = _atrium_like_forward(shape)
    data = torch.randn(2, 1, *shape)
    seg = fg.expand(2, -1, -1, -1, -1)
    losses, diag = t.compute_losses(data, [seg, seg[:, :, ::2, ::2, ::2]], torch.randn(2, 1, *shape), truth_u=None)
    if alive:
        assert 0 < diag["nce_negative_share"].item() < 1
        assert diag["inter_nce"].item() > 0.1 and diag["intra_nce"].item() > 0.1
        losses["inter"].backward()
        assert _grad_norm(t.extra_modules["head_a"]) > 0 and _grad_norm(t.extra_modules["head_b"]) > 0
    else:
        assert diag["nce_negative_share"].item() == 0.0
        assert diag["inter_nce"].item() == 0.0 and diag["intra_nce"].item() == 0.0


@pytest.mark.parametrize("variant, noisy_grad", [(cdr.nnUNetTrainerCDR_detachedNoisyPass, False),
                                                 (cdr.nnUNetTrainerCDR_noisyPassIntra, True),
                                                 (nnUNetTrainerCDR, True)])
def test_noisy_pass_variants_run_a_second_pass_with_or_without_gradient(variant, noisy_grad):
    torch.manual_seed(2)
    t = bare_trainer(variant, unsup_rampup=0.0, region_size=4)
    grad_modes, forward = [], t._forward_with_features

    def recording(k, x):
        grad_modes.append((k, torch.is_grad_enabled()))
        return forward(k, x)

    t._forward_with_features = recording
    losses, _ = t.compute_losses(*_batch(2), truth_u=None)
    # clean passes of A and B with gradient, then the noisy passes (with gradient for _noisyPassIntra only)
    assert grad_modes == [("a", True), ("b", True), ("a", noisy_grad), ("b", noisy_grad)]
    losses["intra"].backward()
    assert _grad_norm(t.student.net_a) > 0 and _grad_norm(t.student.net_b) > 0
    assert _grad_norm(t.extra_modules["head_a"]) > 0 and _grad_norm(t.extra_modules["head_b"]) > 0


def test_deep_to_shallow_intra_term_needs_no_second_pass_and_trains_encoder_and_decoder():
    torch.manual_seed(2)
    # the variant reproduces its records: one pass, no dropout, no intra KD
    assert cdr.nnUNetTrainerCDR_deepToShallowIntra.dropout_p == 0.0
    t = bare_trainer(cdr.nnUNetTrainerCDR_deepToShallowIntra, unsup_rampup=0.0, region_size=4,
                     mask_same_class_negatives=False)
    assert set(t.extra_modules) == {"head_a", "head_b", "bottleneck_head_a", "bottleneck_head_b"}
    calls, forward = [], t._forward_with_features

    def recording(k, x):
        out = forward(k, x)
        calls.append((k, tuple(out[2].shape)))
        return out

    t._forward_with_features = recording
    losses, diag = t.compute_losses(*_batch(2), truth_u=None)
    # one pass per network; its bottleneck (8³ patch, two stride-2 stages: 2³) comes with it
    assert calls == [("a", (4, 8, 2, 2, 2)), ("b", (4, 8, 2, 2, 2))]
    assert diag["intra_nce"].item() > 0
    losses["intra"].backward()
    for k in "ab":
        net = getattr(t.student, f"net_{k}")
        # the decoder through the last-stage anchor, the encoder's last stage through the bottleneck anchor
        assert _grad_norm(net.decoder.stages[-1]) > 0 and _grad_norm(net.encoder.stages[-1]) > 0, k
        assert _grad_norm(t.extra_modules[f"head_{k}"]) > 0 and _grad_norm(t.extra_modules[f"bottleneck_head_{k}"]) > 0


def test_intra_pair_setting_is_checked():
    with pytest.raises(ValueError, match="intra_pair"):
        bare_trainer(nnUNetTrainerCDR, intra_pair="bottleneck")


def test_ablation_variants_select_terms():
    expected = {cdr.nnUNetTrainerCDR_noRegionalContrast: {"sup", "sup_b", "review", "cons", "rkd"},
                cdr.nnUNetTrainerCDR_interOnly: {"sup", "sup_b", "review", "cons", "rkd", "inter"},
                cdr.nnUNetTrainerCDR_intraOnly: {"sup", "sup_b", "review", "cons", "rkd", "intra", "intra_kd"},
                cdr.nnUNetTrainerCDR_MCF: {"sup", "sup_b", "review", "cons"},
                cdr.nnUNetTrainerCDR_singleNetwork: {"sup", "intra", "intra_kd"},
                cdr.nnUNetTrainerCDR_noIntraKD: {"sup", "sup_b", "review", "cons", "rkd", "inter", "intra"},
                cdr.nnUNetTrainerCDR_deepToShallowIntra: {"sup", "sup_b", "review", "cons", "rkd", "inter", "intra"}}
    for cls, keys in expected.items():
        torch.manual_seed(3)
        t = bare_trainer(cls, region_size=4)
        losses, diag = t.compute_losses(*_batch(3), truth_u=None)
        assert set(losses) == keys, cls.__name__
        # the same diagnostics keys every step, whatever is switched off
        assert set(diag) >= {"agreement", "a_led", "inter_nce", "intra_nce", "region_disagreement"}


def test_single_network_predicts_with_net_a_only():
    t = bare_trainer(cdr.nnUNetTrainerCDR_singleNetwork)
    net = t.network
    net.set_deep_supervision(False)
    net.eval()  # as nnUNetv2_predict runs it: no training dropout
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), net.net_a(x))
    # same state-dict keys as the dual export, so checkpoints stay interchangeable
    dual = bare_trainer(nnUNetTrainerCDR).network
    assert net.state_dict().keys() == dual.state_dict().keys() and isinstance(dual, DualNetwork)


def test_max_contrast_regions_subsamples():
    torch.manual_seed(4)
    t = bare_trainer(cdr.nnUNetTrainerCDR_interOnly, unsup_rampup=0.0, region_size=2, max_contrast_regions=16)
    losses, diag = t.compute_losses(*_batch(4), truth_u=None)  # 4 images x 64 regions, 16 kept
    assert torch.isfinite(losses["inter"])
    # with 16 regions the InfoNCE of random embeddings is at most about log(16) (+ weights ≤ 2)
    assert diag["inter_nce"].item() < 2 * math.log(16) + 1


def test_ensemble_average_of_probabilities():
    # V logits (0, 0), R logits (0, 4): mean of softmaxes, not softmax of mean logits
    from nnunet_ssl.modules.dual import average_log_probs
    out = average_log_probs(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 4.0]]))
    p1 = F.softmax(out, 1)[0, 1].item()
    assert p1 == pytest.approx((0.5 + 1 / (1 + math.exp(-4))) / 2, rel=1e-5)
    assert p1 == pytest.approx(0.74101, abs=1e-5)


def test_regional_kd_target_keeps_a_regions_class_proportions():
    """A 10x10 region, 30 % of it foreground with p = 0.9, the rest background with p(fg) = 0.1, T = 0.1.
    Sharpen, then pool: 0.3 / (1 + (1/9)^10) + 0.7 / (1 + 9^10) ≈ 0.3. Pool, then sharpen (before 0.2): the
    region mean 0.34 becomes 1 / (1 + (0.66/0.34)^10) ≈ 1.32e-3, a majority vote."""
    fg = torch.full((1, 1, 10, 10), 0.1)
    fg[..., :3, :] = 0.9
    probs = torch.cat((1 - fg, fg), dim=1)
    expected = 0.3 / (1 + (1 / 9) ** 10) + 0.7 / (1 + 9.0 ** 10)
    new = regional_kd_target(probs, 10, 0.1)
    assert new.shape == (1, 2) and new[0, 1].item() == pytest.approx(expected, rel=1e-5)
    old = regional_kd_target(probs, 10, 0.1, sharpen_first=False)
    assert old[0, 1].item() == pytest.approx(1 / (1 + (0.66 / 0.34) ** 10), rel=1e-4)


def test_regions_of_the_anchors_class_are_not_negatives():
    """Orthogonal embeddings, positives identical (cosine 1), negatives orthogonal (cosine 0), τ = 0.1: each anchor's
    loss is log(1 + k·e^{-10}) with k its number of negatives. Classes (0, 0, 1): the two background regions are
    not each other's negatives (k = 1, 1, 2); without classes every other region is (k = 2, 2, 2)."""
    z = torch.eye(3)
    masked = regional_info_nce(z, z.clone(), 0.1, region_class=torch.tensor([0, 0, 1]))
    k = torch.tensor([1.0, 1.0, 2.0])
    assert masked.item() == pytest.approx(torch.log1p(k * math.exp(-10)).mean().item(), abs=2e-6)  # fp32 CE
    unmasked = regional_info_nce(z, z.clone(), 0.1)
    assert unmasked.item() == pytest.approx(math.log1p(2 * math.exp(-10)), abs=2e-6)


def test_compute_losses_wiring_weights_targets_and_unlabelled_consistency():
    """λ and λ_c multiply their terms; the voxel consistency uses the unlabelled samples only; the regional KD
    target is the leader's voxel-sharpened, region-pooled prediction (detached)."""
    torch.manual_seed(3)
    # no dropout, so that the forward recomputed here is the trainer's
    kwargs = dict(unsup_rampup=0.0, region_size=4, use_intra_contrast=False, unsup_weight=0.3, dropout_p=0.0)
    t = bare_trainer(nnUNetTrainerCDR, contrast_weight=0.7, **kwargs)
    data_l, target_l, data_u = _batch(3)
    losses, diag = t.compute_losses(data_l, target_l, data_u, truth_u=None)
    x = torch.cat((data_l, data_u))
    with torch.no_grad():
        p = {k: torch.softmax(first_output(getattr(t.student, f"net_{k}")(x)), 1) for k in "ab"}
    # the leader from the networks' own labelled Dice losses, computed by hand (not the trainer's diagnostics)
    lead = torch.tensor(float(_mcf_dice_loss_by_hand(t.student.net_a, data_l, target_l[0]) <=
                              _mcf_dice_loss_by_hand(t.student.net_b, data_l, target_l[0])))
    assert diag["a_led"].item() == lead.item()
    mse = lambda s, target, w=None: (((s - target) ** 2).mean(1) * (1 if w is None else w)).mean()
    cons = lead * mse(p["b"][2:], sharpen(p["a"][2:], 0.1)) + (1 - lead) * mse(p["a"][2:], sharpen(p["b"][2:], 0.1))
    assert losses["cons"].item() == pytest.approx(0.3 * cons.item(), rel=1e-4)
    q = {k: flatten_regions(pool_regions(p[k], 4)) for k in "ab"}
    w = 1 + flatten_regions(pool_regions(voxel_disagreement(p["a"], p["b"]), 4))[:, 0]
    rkd = lead * mse(q["b"], regional_kd_target(p["a"], 4, 0.1), w) + \
        (1 - lead) * mse(q["a"], regional_kd_target(p["b"], 4, 0.1), w)
    assert losses["rkd"].item() == pytest.approx(0.3 * rkd.item(), rel=1e-4)
    # the target side carries no gradient: the leader is untouched by the KD term
    losses["rkd"].backward()
    leader = "net_a" if lead.item() == 1.0 else "net_b"
    assert _grad_norm(getattr(t.student, leader)) == 0
    # λ_c scales the contrastive term (same networks, same batch)
    torch.manual_seed(3)
    t2 = bare_trainer(nnUNetTrainerCDR, contrast_weight=0.35, **kwargs)
    losses2, _ = t2.compute_losses(data_l, target_l, data_u, truth_u=None)
    assert losses["inter"].item() == pytest.approx(2 * losses2["inter"].item(), rel=1e-5)


def test_single_network_steps_under_a_grad_scaler():
    """_singleNetwork leaves network B without gradients; the AMP step must still run (GradScaler on the CPU)."""
    torch.manual_seed(4)
    t = bare_trainer(nnUNetTrainerCDR_singleNetwork, region_size=4)
    t.optimizer = torch.optim.SGD(list(t.student.net_a.parameters()) + list(t.extra_modules.parameters()), lr=0.01)
    t.extra_optimizers = {"net_b": torch.optim.SGD(t.student.net_b.parameters(), lr=0.01)}
    t.grad_scaler = torch.amp.GradScaler("cpu")
    t.is_ddp = False
    data_l, target_l, data_u = _batch(4)
    b_before = [p.detach().clone() for p in t.student.net_b.parameters()]
    a_before = [p.detach().clone() for p in t.student.net_a.parameters()]
    losses, _ = t.compute_losses(data_l, target_l, data_u, truth_u=None)
    t.backward_and_step(sum(losses.values()))
    assert all(torch.equal(b, p) for b, p in zip(b_before, t.student.net_b.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(a_before, t.student.net_a.parameters()))
