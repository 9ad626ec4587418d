"""CRLN formulas and wiring on tiny tensors (spec crln.md §11)."""
import math
from dataclasses import replace as dataclasses_replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from nnunet_ssl.modules.ema import EMATeacher
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.crln import (CPSProjectionHead, CRLNNet, cps_loss, cps_positive, image_weighted_nll,
                                      nnUNetTrainerCRLN, nnUNetTrainerCRLN_codeCPSWeight, nnUNetTrainerCRLN_mlpCPSHead,
                                      nnUNetTrainerCRLN_mlpHeadSquareRotation,
                                      nnUNetTrainerCRLN_paperCPSWeight, nnUNetTrainerCRLN_squareOnlyRotation,
                                      nnUNetTrainerCRLN_tiny, prototype_descriptors,
                                      rectification_loss, rectify_logits, sample_cps_indices)

from conftest import load_script

HostSyncAudit = load_script("scripts/sync_audit.py").HostSyncAudit  # a dev tool, not shipped

LN3 = math.log(3.0)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: thread start-up dominates, and oversubscribes a shared CPU badly (100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(dim=3, num_classes=3, strides=None, n_stages=4):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    strides = strides or [1] + [2] * (n_stages - 1)
    return PlainConvUNet(1, n_stages, [4, 8, 8, 8][:n_stages], conv, 3, strides, [1] * n_stages, num_classes,
                         [1] * (n_stages - 1), conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=True)


def tiny_crln(dim=3, num_classes=3, num_prototypes=2, **kwargs):
    torch.manual_seed(0)
    net = CRLNNet(tiny_unet(dim, num_classes, **kwargs), num_classes, num_prototypes)
    nn.init.normal_(net.dim.prototypes, std=0.5)  # zeros (as coded) make every prototype identical
    return net


# ------------------------------------------------------------------------------------------ rectification
def _softmax_rectified(a):
    z = torch.zeros(1, 2)
    m = torch.tensor([[0.0, LN3]])
    return torch.softmax(rectify_logits(z, m, torch.tensor(a)), 1)[0]


def test_rectification_formula_hand_computed():
    assert torch.allclose(_softmax_rectified(0.0), torch.tensor([0.25, 0.75]))
    assert _softmax_rectified(0.5)[1].item() == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-6)
    assert _softmax_rectified(0.5)[1].item() == pytest.approx(0.6340, abs=1e-4)
    assert torch.allclose(_softmax_rectified(1.0), torch.tensor([0.5, 0.5]))
    assert _softmax_rectified(-1.0)[1].item() == pytest.approx(0.9, abs=1e-6)  # no clamp: (1 - a) = 2 -> 9:1


def test_rectification_loss_gradient_ce_part():
    a = nn.Parameter(torch.zeros(()))
    z = torch.zeros(1, 2, 1, 1, 1)
    m = torch.tensor([0.0, LN3]).view(1, 2, 1, 1, 1)
    y = torch.ones(1, 1, 1, 1, 1)
    ce = lambda logits, target: F.cross_entropy(logits, target[:, 0].long())  # noqa: E731
    loss = 0.5 * rectification_loss(z, m, a, y, ce)
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)  # 0.1438
    loss.backward()
    assert a.grad.item() == pytest.approx(0.5 * LN3 * (1 / 3) / (1 + 1 / 3), abs=1e-6)  # 0.1373


# ----------------------------------------------------------------------------------------- unsupervised
def test_image_weighted_nll_hand_computed():
    logits = torch.zeros(1, 2, 5)                           # per-voxel NLL = ln 2
    labels = torch.tensor([[0, 1, 1, 0, -1]])               # the last voxel is ignored
    conf = torch.tensor([[0.99, 0.98, 0.5, 0.97, 0.99]])    # 3 of 4 valid voxels >= 0.97 -> w = 0.75
    loss = image_weighted_nll(logits, labels, conf, 0.97)
    assert loss.item() == pytest.approx(0.75 * math.log(2), abs=1e-6)  # 0.5199
    # a second image with w = 0 drops out of the mean entirely
    loss2 = image_weighted_nll(torch.zeros(2, 2, 5), torch.cat((labels, torch.tensor([[0, 1, 0, 1, 0]]))),
                               torch.cat((conf, torch.full((1, 5), 0.6))), 0.97)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
    # a confident student lowers the loss; an ignored voxel's logits do not matter
    logits_ignored = logits.clone()
    logits_ignored[0, :, 4] = torch.tensor([5.0, -5.0])
    assert image_weighted_nll(logits_ignored, labels, conf, 0.97).item() == pytest.approx(loss.item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------- CPS
def test_positive_formula():
    protos = torch.tensor([[1.0, 3.0], [2.0, 4.0]])[None, None]       # (1, C=1, M=2, F=2)
    desc = prototype_descriptors(protos)
    assert torch.allclose(desc, torch.tensor([[2.0, 3.0]]))
    r = torch.tensor([1.0, 0.0])
    assert torch.allclose(cps_positive(r, desc[0], 0.6), torch.tensor([1.375, 1.125]))
    assert torch.equal(cps_positive(r, None, 0.6), r)                   # before T_rect / no DIM
    assert torch.equal(cps_positive(r, desc[0], 0.6, "mean"), r)
    assert torch.equal(cps_positive(r, desc[0], 0.6, "prototype"), desc[0])
    with pytest.raises(ValueError, match="positive mode"):
        cps_positive(r, desc[0], 0.6, "other")


def _two_class_features(n=6):
    labels = torch.tensor([0] * n + [1] * n)
    emb = torch.cat((torch.tensor([[1.0, 0.0]]).repeat(n, 1), torch.tensor([[0.0, 1.0]]).repeat(n, 1)))
    return emb, labels, torch.ones(2 * n, dtype=torch.bool)


def test_cps_loss_tiny_feature_set():
    emb, labels, valid = _two_class_features()
    # anchor == positive (cos 1), 512 orthogonal negatives (cos 0): ln(1 + 512 e^{-2})
    loss = cps_loss(emb, labels, valid, valid, 2, None, 0.6, num_anchors=256, num_negatives=512, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + 512 * math.exp(-2)), abs=1e-4)  # 4.2527
    # prototypes rotate the positive by 45 degrees (ξ = 1): ln(1 + 512 e^{-√2})
    desc = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = cps_loss(emb, labels, valid, valid, 2, desc, 1.0, num_anchors=256, num_negatives=512, temperature=0.5)
    assert loss.item() == pytest.approx(4.8321, abs=1e-4)
    # anchor equal to the positive and to all 512 negatives: ln(513), larger
    bad = cps_loss(torch.ones_like(emb), labels, valid, valid, 2, None, 0.6)
    assert bad.item() == pytest.approx(math.log(513), abs=1e-4) and bad.item() > loss.item()
    # fewer than two classes: exactly 0, with a graph
    emb.requires_grad_(True)
    zero = cps_loss(emb, torch.zeros_like(labels), valid, valid, 2, None, 0.6)
    assert zero.item() == 0.0 and zero.requires_grad
    # no uncertain voxel anywhere: 0
    assert cps_loss(emb, labels, valid, torch.zeros_like(valid), 2, None, 0.6).item() == 0.0


def test_cps_gradient_reaches_anchors_only_and_positive_is_constant():
    emb, labels, valid = _two_class_features()
    emb = (emb + 0.1 * torch.randn_like(emb)).requires_grad_(True)
    torch.manual_seed(0)
    cps_loss(emb, labels, valid, labels == 0, 2, None, 0.6, num_anchors=4, num_negatives=8).backward()
    # only class-0 voxels are uncertain, so only they (as anchors) get gradients
    assert emb.grad[labels == 1].abs().sum() == 0 and emb.grad[labels == 0].abs().sum() > 0


def test_anchor_and_negative_sampling_rules():
    torch.manual_seed(0)
    #                     0  1  2  3  4  5  6  7  8  9 10 11
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    valid = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)  # 3, 7: padded (conf 0)
    uncertain = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=torch.bool) & valid
    means = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])  # class 1 close to class 0, class 2 opposite
    with HostSyncAudit() as audit:
        anchors_all, negatives_all, usable = sample_cps_indices(labels, valid, uncertain, means, num_anchors=256,
                                                                num_negatives=512)
    assert audit.events == []                                     # sampling never waits for the device
    assert anchors_all.shape == (3, 256) and negatives_all.shape == (3, 256, 512)
    assert usable.tolist() == [True, True, False]                 # class 2 has no uncertain voxel
    samples = {c: (anchors_all[c], negatives_all[c]) for c in (0, 1)}
    for c, (anchors, negatives) in samples.items():
        assert set(anchors.tolist()) <= set(torch.nonzero(uncertain & (labels == c)).squeeze(1).tolist())
        assert set(negatives.flatten().tolist()) <= set(torch.nonzero(valid & (labels != c)).squeeze(1).tolist())
        assert not ({3, 7} & set(anchors.tolist()) | {3, 7} & set(negatives.flatten().tolist()))
    assert set(samples[0][0].tolist()) == {0}
    # negative class ~ softmax(cos(r̄_c, r̄_j) / 0.5): class 0 draws class 1 with p = e^{2cos}/(e^{2cos}+e^{-2})
    cos01 = F.cosine_similarity(means[0], means[1], dim=0).item()
    expected = math.exp(2 * cos01) / (math.exp(2 * cos01) + math.exp(-2))
    frac = (labels[samples[0][1]] == 1).float().mean().item()
    assert frac == pytest.approx(expected, abs=0.01)
    # only one class with valid voxels: nothing to contrast
    assert not sample_cps_indices(labels, valid & (labels == 0), uncertain, means, 4, 4)[2].any()


# ---------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("dim,patch,strides", [
    (3, (8, 16, 16), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),  # anisotropic first stride
    (2, (16, 16), None)])
def test_shapes_and_inference_path(dim, patch, strides):
    net = tiny_crln(dim, 3, 2, strides=strides)
    x = torch.randn(2, 1, *patch)
    seg, relation_map, features = net(x, return_extras=True)
    assert isinstance(seg, list) and seg[0].shape == (2, 3, *patch)
    assert net.dim.prototypes.shape == (1, 3, 2, 8)                 # F = channels of block I's stage
    assert relation_map.shape == (2, 3, *patch) and (relation_map >= 0).all()
    _, proximity = net.dim(features[-3], features[-2], return_proximity=True)
    assert proximity.shape == (2, 3, 2, features[-2][0, 0].numel())  # (B, C, M, N at block II)
    emb = ProjectionHead(features[-1].shape[1], 2, 2, dim)(features[-1])
    assert emb.shape == (2, 2, *patch)
    # no layer is tied to the patch size: a larger patch runs too
    bigger = tuple(2 * p for p in patch)
    assert net(torch.randn(1, 1, *bigger), return_extras=True)[1].shape == (1, 3, *bigger)
    # the DIM runs on the first dim_batch samples only (labelled part of a joint batch)
    assert net(x, return_extras=True, dim_batch=1)[1].shape[0] == 1
    # deep supervision off (prediction): one tensor, the rectified logits z + (1 - a) M(x)
    net.eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        net.rectifier.a.fill_(0.3)
        out = net(x)
        z, m, _ = net(x, return_extras=True)
    assert torch.is_tensor(out) and torch.allclose(out, z + 0.7 * m, atol=1e-6)
    # a state dict of one build loads strictly into another
    fresh = CRLNNet(tiny_unet(dim, 3, strides=strides), 3, 2)
    fresh.load_state_dict(net.state_dict(), strict=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relation_map_alive_at_initialisation(seed):
    """A map that is 0 everywhere (dead final ReLU) would leave the DIM and `a` without any gradient."""
    torch.manual_seed(seed)
    net = CRLNNet(tiny_unet(3, 3), 3, 2).eval()   # zero prototypes, as coded; eval mode as in eq. 16
    with torch.no_grad():
        relation_map = net(torch.randn(2, 1, 16, 16, 16), return_extras=True)[1]
    assert (relation_map > 0).float().mean() > 0.1


def test_shallow_network_and_faithful_reshape():
    net = CRLNNet(tiny_unet(3, 3, n_stages=2), 3, 2)                 # one decoder stage: block I = II = -1
    assert net.block1_stage == net.block2_stage == -1
    assert net(torch.randn(1, 1, 8, 8, 8), return_extras=True)[1].shape == (1, 3, 8, 8, 8)
    faithful = CRLNNet(tiny_unet(3, 3, n_stages=3), 3, 2, faithful_reshape=True)
    assert faithful.dim.block1.faithful_reshape and faithful(torch.randn(1, 1, 8, 8, 8), return_extras=True)[1] \
        .shape == (1, 3, 8, 8, 8)


# ---------------------------------------------------------------------------------- trainer wiring
def bare_trainer(ssl_step=10, dim=3):
    """The trainer's loss code on a tiny CRLNNet, without plans or data loaders."""
    torch.manual_seed(0)
    trainer = nnUNetTrainerCRLN_tiny.__new__(nnUNetTrainerCRLN_tiny)
    net = tiny_crln(dim, 3, 2)
    trainer.network = net
    trainer.teachers = {"teacher": EMATeacher(net, 0.99)}
    trainer.configuration_manager = SimpleNamespace(patch_size=(8,) * dim)
    trainer.extra_modules = nn.ModuleDict(trainer.build_extra_modules())  # the trainer's own CPS head
    trainer.loss = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                       weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss), [4 / 7, 2 / 7, 1 / 7])
    trainer.label_manager = SimpleNamespace(num_segmentation_heads=3, ignore_label=None)
    trainer.device = torch.device("cpu")
    trainer.is_ddp = False
    trainer.ssl_step = ssl_step
    trainer.num_epochs, trainer.num_iterations_per_epoch = 2, 3
    trainer._labelled_outputs = None
    trainer._compiled_modules, trainer._compile_modules = {}, False  # eager teacher forward
    trainer.extra_optimizers = {"rectifier": torch.optim.SGD(net.rectifier.parameters(), 2.5e-3, momentum=0.9,
                                                             nesterov=True, weight_decay=5e-4)}
    return trainer


def tiny_batch(dim=3):
    torch.manual_seed(1)
    shape = (16,) * dim
    data_l, data_u = torch.randn(2, 1, *shape), torch.randn(2, 1, *shape)
    seg = torch.randint(0, 3, (2, 1, *shape)).float()
    target_l = [seg, seg[(..., *[slice(None, None, 2)] * dim)], seg[(..., *[slice(None, None, 4)] * dim)]]
    truth_u = torch.randint(0, 3, (2, *shape))
    return data_l, target_l, data_u, truth_u


def _grads(params):
    return [None if p.grad is None else p.grad.abs().sum().item() for p in params]


@pytest.mark.parametrize("dim", [3, 2])
def test_gradient_routing(dim):
    trainer = bare_trainer(dim=dim)
    net, teacher = trainer.network, trainer.teacher.module
    data_l, target_l, data_u, truth_u = tiny_batch(dim)
    losses, diagnostics = trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert set(losses) == {"sup", "dim", "unsup", "cps"}
    assert diagnostics["rectification_active"].item() == 1.0
    for k in ("reliable_fraction_rectified", "pseudo_label_dice", "pseudo_label_dice_rectified"):
        assert torch.isfinite(diagnostics[k]), k
    # everything but the DIM's supervised term: no gradient for prototypes / DIM, none for `a`
    sum(v for k, v in losses.items() if k != "dim").backward(retain_graph=True)
    assert all(g in (None, 0.0) for g in _grads(net.dim.parameters()))
    assert net.rectifier.a.grad is None
    assert all(g is not None and g > 0 for g in _grads(trainer.extra_modules.parameters()))  # CPS head
    assert all(p.grad is None for p in teacher.parameters())
    # the DIM's supervised term reaches the prototypes, block II and the map head
    net.zero_grad(set_to_none=True)
    losses["dim"].backward()
    assert net.dim.prototypes.grad.abs().sum() > 0
    assert net.dim.block2.kv.weight.grad.abs().sum() > 0 and net.dim.head.shared.weight.grad.abs().sum() > 0
    assert net.rectifier.a.grad is None and all(p.grad is None for p in teacher.parameters())
    # eq. 16 moves `a` only
    net.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = trainer.rectifier_step(data_l, target_l[0])
    assert torch.isfinite(loss)
    assert net.rectifier.a.grad is not None and net.rectifier.a.item() != 0.0
    assert all(p.grad is None for n, p in net.named_parameters() if n != "rectifier.a")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items() if k != "rectifier.a")
    assert net.training  # the eval-mode forward of eq. 16 puts the student back


def test_rectification_switch_at_T_rect():
    trainer = bare_trainer(ssl_step=2)
    assert trainer.rectification_start() == 3 and not trainer.rectification_active()
    data_l, target_l, data_u, truth_u = tiny_batch()
    with torch.no_grad():
        trainer.teacher.module.rectifier.a.fill_(-20.0)  # a huge (1 - a) M makes rectified labels differ
    raw, rect = trainer.make_pseudo_labels(data_u)
    assert not torch.equal(raw[0], rect[0])
    _, diag = trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert diag["rectification_active"].item() == 0.0
    trainer.ssl_step = 3
    _, diag = trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert diag["rectification_active"].item() == 1.0
    # default: T_rect = 2 % of all iterations; an absolute value overrides it
    trainer.rectification_start_iteration = None
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1000, 250
    assert trainer.rectification_start() == 5000


def test_prototype_descriptor_is_trained_and_changes_the_positive():
    """P̃ from the raw parameter is blind (LayerNorm removes its channel mean, which stays 0); P̃ from the trained
    prototype queries moves with a training step, and the 'prototype' positive then differs from the class mean."""
    trainer = bare_trainer()
    net = trainer.network
    with torch.no_grad():
        net.dim.prototypes.sub_(net.dim.prototypes.mean(-1, keepdim=True))  # as trained from the zero init
    raw_before = prototype_descriptors(net.dim.prototypes).detach().clone()
    queries_before = prototype_descriptors(net.dim.prototype_queries()).detach().clone()
    assert raw_before.abs().max() < 1e-6 and queries_before.abs().max() > 1e-3
    data_l, target_l, data_u, truth_u = tiny_batch()
    # the DIM's gradients are small in this tiny network: a large step makes the change visible
    opt = torch.optim.SGD(list(net.parameters()) + list(trainer.extra_modules.parameters()), lr=100.0)
    losses, _ = trainer.compute_losses(data_l, target_l, data_u, truth_u)
    sum(losses.values()).backward()
    opt.step()
    assert prototype_descriptors(net.dim.prototypes).abs().max() < 1e-6  # the raw channel means stay blind
    change = (prototype_descriptors(net.dim.prototype_queries()) - queries_before).abs().max()
    assert change > 1e-4  # vs < 1e-6 for the raw parameter
    # the positive the trainer builds: 'prototype' (LP) and 'mean' (MR) give different CPS losses
    emb, labels, valid = _two_class_features()
    desc = prototype_descriptors(net.dim.prototype_queries()).detach()[:2, :2]
    uncertain = torch.ones_like(valid)
    torch.manual_seed(0)
    lp = cps_loss(emb, labels, valid, uncertain, 2, desc, 0.6, "prototype", 8, 8, 0.5)
    torch.manual_seed(0)
    mr = cps_loss(emb, labels, valid, uncertain, 2, desc, 0.6, "mean", 8, 8, 0.5)
    assert not torch.allclose(lp, mr)


def test_trainer_uses_queries_for_the_positive_after_T_rect(monkeypatch):
    """compute_cps hands the teacher's prototype-query descriptor to cps_loss after T_rect, None before."""
    import nnunet_ssl.trainers.crln.trainer as crln  # where the trainer looks it up
    seen = []
    real = crln.cps_loss
    monkeypatch.setattr(crln, "cps_loss", lambda *a, **k: (seen.append(a[5]), real(*a, **k))[1])
    trainer = bare_trainer(ssl_step=10)
    data_l, target_l, data_u, truth_u = tiny_batch()
    trainer.compute_losses(data_l, target_l, data_u, truth_u)
    expected = prototype_descriptors(trainer.teacher.module.dim.prototype_queries())
    assert torch.allclose(seen[-1], expected)
    trainer.ssl_step = 0
    trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert seen[-1] is None


def test_unsupervised_loss_uses_rectified_labels_after_T_rect(monkeypatch):
    """Before T_rect the student is trained on the raw teacher labels, from T_rect on on the rectified ones."""
    import nnunet_ssl.trainers.crln.trainer as crln  # where the trainer looks it up
    seen = []
    real = crln.image_weighted_nll
    monkeypatch.setattr(crln, "image_weighted_nll", lambda logits, labels, *a: (seen.append(labels), real(logits, labels, *a))[1])
    trainer = bare_trainer(ssl_step=0)
    trainer.use_strong_view = False  # labels reach the loss untransformed
    data_l, target_l, data_u, truth_u = tiny_batch()
    with torch.no_grad():
        trainer.teacher.module.rectifier.a.fill_(-20.0)
    raw, rect = trainer.make_pseudo_labels(data_u)
    assert not torch.equal(raw[0], rect[0])
    trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert torch.equal(seen[-1], raw[0])
    trainer.ssl_step = 10
    trainer.compute_losses(data_l, target_l, data_u, truth_u)
    assert torch.equal(seen[-1], rect[0])


def test_crlnnet_state_dict_names_are_stable():
    """nnUNetv2_predict loads checkpoint['network_weights'] into CRLNNet strictly: the weight names of existing
    checkpoints (U-Net under 'unet.', DIM under 'dim.', the rectifier's 'a') must not change."""
    net = tiny_crln(3, 3, 2)
    keys = list(net.state_dict())
    assert len(keys) == 160
    assert keys[:2] == ["unet.encoder.stages.0.0.convs.0.conv.weight", "unet.encoder.stages.0.0.convs.0.conv.bias"]
    assert keys[-3:] == ["dim.head.upsample.weight", "dim.head.upsample.bias", "rectifier.a"]
    for k in ("dim.prototypes", "dim.block1.q.weight", "dim.query_proj.weight", "dim.block2.kv.bias",
              "dim.head.spatial.1.running_mean", "dim.head.shared.weight", "unet.decoder.seg_layers.2.weight"):
        assert k in keys, k


def test_decoder_features_come_from_the_tap_and_teachers_tap_their_own_decoder():
    """CRLNNet reads the decoder through DecoderFeatureTap (the mechanism CDR and UGPL use); an EMA copy gets its
    own tap, and the student's hooks do not fire for it."""
    net = tiny_crln(3, 3, 2)
    x = torch.randn(2, 1, 16, 16, 16)
    manual = {}
    skips = net.unet.encoder(x)
    low_res, n = skips[-1], len(net.decoder.stages)
    for s in range(n):  # UNetDecoder's own loop
        low_res = net.decoder.stages[s](torch.cat((net.decoder.transpconvs[s](low_res), skips[-(s + 2)]), 1))
        manual[s - n] = low_res
    net.feature_tap.pop()  # the stages above were tapped too
    seg, _, features = net(x, return_extras=True)
    assert features.keys() == manual.keys()
    assert all(torch.allclose(features[k], manual[k], atol=1e-6) for k in manual)
    teacher = EMATeacher(net, 0.99)
    t_seg, t_map, t_features = teacher.module(x, return_extras=True)
    assert t_map is not None and t_features.keys() == manual.keys() and net.feature_tap.features == {}
    assert all(torch.allclose(t_features[k], manual[k], atol=1e-6) for k in manual)


def test_cps_term_scales_with_its_weight_alone():
    # the default weight (0.05) against the authors' code weight (0.5, `_codeCPSWeight`): on the same batch and
    # weights the CPS term is 10x larger and nothing else changes
    assert nnUNetTrainerCRLN.cps_weight == pytest.approx(0.1 * nnUNetTrainerCRLN_codeCPSWeight.cps_weight)
    results = []
    for weight in (nnUNetTrainerCRLN.cps_weight, nnUNetTrainerCRLN_codeCPSWeight.cps_weight):
        trainer = bare_trainer()
        trainer.cps_weight = weight
        torch.manual_seed(5)
        losses, _ = trainer.compute_losses(*tiny_batch())
        results.append({k: v.item() for k, v in losses.items()})
    default, code = results
    assert code["cps"] > 0 and default["cps"] == pytest.approx(0.1 * code["cps"], rel=1e-5)
    assert all(default[k] == pytest.approx(code[k], rel=1e-6) for k in ("sup", "dim", "unsup"))


# ------------------------------------------------------------------------------- CPS head, rotation, weight
@pytest.mark.parametrize("dim", [2, 3])
def test_cps_head_is_the_spec_head(dim):
    """Spec §3.1: conv 3^k (C -> M, no bias) -> BN -> ReLU -> conv 1^k (M -> M), embeddings not normalised."""
    trainer = nnUNetTrainerCRLN.__new__(nnUNetTrainerCRLN)
    trainer.network = tiny_crln(dim, 3, 2)
    trainer.configuration_manager = SimpleNamespace(patch_size=(8,) * dim)
    head = trainer.build_extra_modules()["cps_head"]
    assert isinstance(head, CPSProjectionHead)
    conv3, norm, relu, conv1 = head.net
    conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dim == 3 else (nn.Conv2d, nn.BatchNorm2d)
    assert isinstance(conv3, conv) and conv3.kernel_size == (3,) * dim and conv3.bias is None
    assert (conv3.in_channels, conv3.out_channels) == (4, trainer.num_prototypes)  # last decoder stage: 4 channels
    assert isinstance(norm, bn) and isinstance(relu, nn.ReLU)
    assert isinstance(conv1, conv) and conv1.kernel_size == (1,) * dim and conv1.out_channels == trainer.num_prototypes
    emb = head(torch.randn(2, 4, *(6,) * dim))
    assert emb.shape == (2, trainer.num_prototypes, *(6,) * dim)
    assert not torch.allclose(emb.norm(dim=1), torch.ones(()))  # raw embeddings: the InfoNCE takes cosines
    mlp = nnUNetTrainerCRLN_mlpCPSHead.__new__(nnUNetTrainerCRLN_mlpCPSHead)
    mlp.network, mlp.configuration_manager = trainer.network, trainer.configuration_manager
    assert isinstance(mlp.build_extra_modules()["cps_head"], ProjectionHead)


def test_crln_strong_view_turns_non_square_patches_and_the_variants_keep_the_old_settings():
    assert nnUNetTrainerCRLN.strong_augmentation.rotate_non_square
    assert nnUNetTrainerCRLN.strong_augmentation.p_rot_flip == 0.5
    assert not nnUNetTrainerCRLN_squareOnlyRotation.strong_augmentation.rotate_non_square
    assert nnUNetTrainerCRLN.cps_head == "spec" and nnUNetTrainerCRLN_mlpCPSHead.cps_head == "mlp"
    old = nnUNetTrainerCRLN_mlpHeadSquareRotation  # reproduces the pre-0.2 records
    assert old.cps_head == "mlp" and not old.strong_augmentation.rotate_non_square
    assert dataclasses_replace(old.strong_augmentation, rotate_non_square=True) == nnUNetTrainerCRLN.strong_augmentation
    assert nnUNetTrainerCRLN_paperCPSWeight.cps_weight == 0.5 == nnUNetTrainerCRLN_codeCPSWeight.cps_weight
    aug = nnUNetTrainerCRLN.strong_augmentation
    g = torch.Generator().manual_seed(0)
    _, params = dataclasses_replace(aug, through_plane_axis=0)(torch.randn(8, 1, 4, 28, 36), generator=g)
    assert (params.affine[:, 1, 1].abs() < 1e-6).any()  # some sample got a quarter turn on 28 x 36
