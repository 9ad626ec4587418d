"""BoCLIS parts with hand-computed values (spec specs/boclis.md §10): aggregation, EMA teachers, weighted CE,
region extraction (2D/3D), edge windows at image borders, masked patch crops, SupCon values, gradient routing."""
import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.losses.boundary import (centre_regions, crop_masked_patches, dilate, edge_regions, erode,
                                        extract_regions, inner_boundary, mask_extents, sample_voxels, window_masks)
from nnunet_ssl.losses.contrastive import info_nce
from nnunet_ssl.losses.supervised_contrastive import supervised_contrastive_loss
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.boclis import (ClassMemoryQueue, aggregate_teacher_predictions, boclis_contrastive_loss,
                                        contrast_patch_size, encode_patches, encoder_stage_channels,
                                        nnUNetTrainerBoCLIS, patch_encoder_depth, reliability_weighted_cross_entropy)


def _probs(*teachers):
    """K teachers' probabilities for one voxel, C = 2: (K, B=1, C, 1, 1)."""
    return torch.tensor(teachers, dtype=torch.float32).view(len(teachers), 1, -1, 1, 1)


# ------------------------------------------------------------------------------------------------ aggregation
def test_entropy_weighted_aggregation_hand_values():
    agg = aggregate_teacher_predictions(_probs((1.0, 0.0), (0.5, 0.5)))
    # U = (0, ln 2): w = (1, 1/2) / 1.5
    assert agg.weights.flatten().tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-5)
    assert agg.probabilities.flatten().tolist() == pytest.approx([5 / 6, 1 / 6], abs=1e-5)
    assert agg.labels.item() == 0 and agg.confidence.item() == pytest.approx(5 / 6, abs=1e-5)
    # H(p̄) = 0.45056, r = 1 - 0.45056 / ln 2
    assert agg.reliability.item() == pytest.approx(0.3500, abs=1e-4)


def test_aggregation_identical_teachers_uniform_and_normalised():
    same = aggregate_teacher_predictions(_probs((0.3, 0.7), (0.3, 0.7), (0.3, 0.7)))
    assert same.weights.flatten().tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert same.probabilities.flatten().tolist() == pytest.approx([0.3, 0.7], abs=1e-6)
    assert same.labels.item() == 1
    uniform = aggregate_teacher_predictions(_probs((1.0, 0.0), (0.5, 0.5)), weighting="uniform")
    assert uniform.probabilities.flatten().tolist() == pytest.approx([0.75, 0.25], abs=1e-6)
    # U / log C = (0, 1): w_1 = 1 / (1 + e^-1)
    normalised = aggregate_teacher_predictions(_probs((1.0, 0.0), (0.5, 0.5)), normalise_uncertainty=True)
    assert normalised.weights.flatten()[0].item() == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        aggregate_teacher_predictions(_probs((1.0, 0.0)), weighting="mean")


# ------------------------------------------------------------------------------------------------ EMA teachers
class _FakeTrainer:
    """Just what build_teachers needs (a real trainer needs a planned dataset)."""
    teacher_names = nnUNetTrainerBoCLIS.teacher_names
    build_teachers = nnUNetTrainerBoCLIS.build_teachers

    def __init__(self, decays):
        self.teacher_decays = decays
        self.network = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.network.weight.zero_()


def test_teachers_conservative_to_radical():
    trainer = _FakeTrainer(nnUNetTrainerBoCLIS.teacher_decays)
    teachers = trainer.build_teachers()
    assert list(teachers) == ["teacher", "teacher_2", "teacher_3"]
    assert [t.decay for t in teachers.values()] == [0.999, 0.99, 0.9]
    # t = 0: α(0) = 0, every teacher becomes the student
    with torch.no_grad():
        trainer.network.weight.fill_(0.5)
    for t in teachers.values():
        t.update(trainer.network)
        assert t.module.weight.item() == pytest.approx(0.5)
    # late jump 0 -> 1 (warm-up no longer binds): teachers read 1 - α
    with torch.no_grad():
        trainer.network.weight.fill_(1.0)
    for t in teachers.values():
        t.module.weight.data.zero_()
        t.step = 10_000
        t.update(trainer.network)
    assert [t.module.weight.item() for t in teachers.values()] == pytest.approx([0.001, 0.01, 0.1], abs=1e-6)
    # t = 100: the warm-up caps the conservative teacher at 1 - 1/101
    teachers["teacher"].step = 100
    assert teachers["teacher"].update(trainer.network) == pytest.approx(1 - 1 / 101)
    assert all(not p.requires_grad for t in teachers.values() for p in t.parameters())


def test_teacher_decays_must_go_conservative_to_radical():
    with pytest.raises(ValueError, match="teacher_decays"):
        _FakeTrainer((0.9, 0.999)).build_teachers()
    assert list(_FakeTrainer((0.99,)).build_teachers()) == ["teacher"]


# ---------------------------------------------------------------------------------------- reliability-weighted CE
def test_reliability_weighted_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]]).t()[None, :, :, None]  # (B=1, C=2, 2 voxels, 1)
    labels = torch.tensor([[[0], [0]]])
    ce_first = -math.log(math.exp(2) / (math.exp(2) + 1))
    r = torch.tensor([[[1.0], [0.0]]])
    assert reliability_weighted_cross_entropy(logits, labels, r).item() == pytest.approx(ce_first, abs=1e-5)
    # r = (0.5, 0.5): plain mean of both voxels' CE
    ce_second = -math.log(1 / (1 + math.exp(3)))
    half = reliability_weighted_cross_entropy(logits, labels, torch.full_like(r, 0.5))
    assert half.item() == pytest.approx((ce_first + ce_second) / 2, abs=1e-5)
    logits.requires_grad_(True)
    zero = reliability_weighted_cross_entropy(logits, labels, torch.zeros_like(r))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------- region extraction
def _cube(shape, lo, hi):
    m = torch.zeros(shape, dtype=torch.bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_erosion_and_boundary_3d_and_2d():
    cube = _cube((9, 9, 9), (2, 2, 2), (7, 7, 7))[None]  # solid 5³
    assert erode(cube, 1).sum() == 27 and erode(cube, 2).sum() == 1 and erode(cube, 3).sum() == 0
    assert inner_boundary(cube).sum() == 125 - 27
    square = _cube((9, 9), (2, 2), (7, 7))[None]
    assert erode(square, 1).sum() == 9 and inner_boundary(square).sum() == 16
    # outside the array counts as foreground: a full mask has no boundary, a border-touching one is not eroded there
    assert inner_boundary(torch.ones(1, 6, 6, 6, dtype=torch.bool)).sum() == 0
    corner = _cube((8, 8), (0, 0), (3, 3))[None]
    assert erode(corner, 1).sum() == 4
    # cross dilation of one voxel: 1 + 2·ndim voxels, then the L1 ball
    point = _cube((7, 7, 7), (3, 3, 3), (4, 4, 4))[None]
    assert dilate(point, 1).sum() == 7 and dilate(point, 2).sum() == 25 and dilate(point, 1, "box").sum() == 27
    with pytest.raises(TypeError):
        erode(cube.float())


def test_centre_region_keeps_largest_component():
    both = _cube((12, 12, 12), (0, 0, 0), (2, 2, 2)) | _cube((12, 12, 12), (6, 6, 6), (9, 9, 9))  # 8 + 27 voxels
    centre = centre_regions(both[None, None], erosion_iterations=0)
    assert centre.sum() == 27 and centre[0, 0, 7, 7, 7]
    flat = _cube((12, 12), (0, 0), (2, 2)) | _cube((12, 12), (6, 6), (9, 9))
    assert centre_regions(flat[None, None], 0).sum() == 9
    # a single voxel erodes to nothing: its centre patch is empty (and skipped later)
    single = _cube((6, 6, 6), (3, 3, 3), (4, 4, 4))
    assert centre_regions(single[None, None], 1).sum() == 0
    # without the component step both (eroded) blobs stay
    assert centre_regions(both[None, None], 0, keep_largest_component=False).sum() == 35


def test_edge_window_half_extent_and_class_restriction():
    # class-1 rectangle rows 10..30, cols 10..12: boundary rows span [10, 30] -> half-extent 0.25·20 = 5 rows,
    # cols span [10, 12] -> max(1, 0) = 1 col
    labels = torch.zeros(1, 40, 24, dtype=torch.long)
    labels[0, 10:31, 10:13] = 1
    whole = labels[:, None] == torch.arange(2).view(1, 2, 1, 1)
    lo, hi, _ = mask_extents(inner_boundary(whole[0, 1:]))
    assert lo.tolist() == [[10, 10]] and hi.tolist() == [[30, 12]]
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        edge = edge_regions(whole, dilation_iterations=0, generator=g)
        assert edge[0, 1].any() and not (edge & ~whole).any()
        rows = edge[0, 1].any(1).nonzero()[:, 0]
        assert rows.max() - rows.min() <= 10
        cols = edge[0, 1].any(0).nonzero()[:, 0]
        assert cols.max() - cols.min() <= 2
    dilated = edge_regions(whole, dilation_iterations=3, generator=torch.Generator().manual_seed(0))
    assert not (dilated & ~whole).any()


def test_edge_window_clipped_at_image_border():
    # an object in the corner: its window and crops stay inside the array
    window = window_masks(torch.tensor([[0, 0]]), torch.tensor([[5, 1]]), (16, 16))
    assert window.sum() == 6 * 2 and window[0, :6, :2].all()
    labels = torch.zeros(2, 12, 12, 12, dtype=torch.long)
    labels[0, :4, :4, :4] = 1
    labels[1, 8:, 8:, 8:] = 1
    regions = extract_regions(labels, 2, centre_erosion_iterations=1, generator=torch.Generator().manual_seed(3))
    edge = regions["edge"][:, 1]
    assert edge.any(dim=(1, 2, 3)).all() and not (edge & (labels == 0)).any()
    patches = crop_masked_patches(torch.randn(2, 1, 12, 12, 12), edge, torch.tensor([0, 1]), (6, 6, 6))
    assert patches.shape == (2, 1, 6, 6, 6) and torch.isfinite(patches).all()


def test_edge_sampling_uses_only_the_given_generator():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, 3:17, 3:17] = 1
    whole = labels[:, None] == torch.arange(2).view(1, 2, 1, 1)
    global_state = torch.random.get_rng_state()
    a = edge_regions(whole, generator=torch.Generator().manual_seed(1))
    b = edge_regions(whole, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), global_state)
    picks = {tuple(sample_voxels(inner_boundary(whole[0, 1:]), torch.Generator().manual_seed(s))[0][0].tolist())
             for s in range(10)}
    assert len(picks) > 1  # not reseeded to one fixed voxel
    assert all(inner_boundary(whole[0, 1:])[0][p] for p in picks)
    # 'region' seeding (ablation) may start from the interior, and stays inside the class
    region = edge_regions(whole, seed_from="region", generator=torch.Generator().manual_seed(0))
    assert region[0, 1].any() and not (region & ~whole).any()


def test_crop_masked_patches_equals_interpolated_crop():
    images = torch.randn(2, 2, 10, 12)
    mask = torch.zeros(1, 10, 12, dtype=torch.bool)
    mask[0, 2:7, 3:11] = True
    mask[0, 2, 3] = False
    out = crop_masked_patches(images, mask, torch.tensor([1]), (16, 16))
    crop = (images[1:] * mask[:, None])[:, :, 2:7, 3:11]
    assert torch.allclose(out, F.interpolate(crop, (16, 16), mode="bilinear", align_corners=False), atol=1e-5)
    vol = torch.randn(1, 1, 9, 8, 7)
    m3 = _cube((9, 8, 7), (1, 2, 0), (6, 8, 4))[None]
    out3 = crop_masked_patches(vol, m3, torch.tensor([0]), (8, 8, 8))
    ref3 = F.interpolate((vol * m3[:, None])[:, :, 1:6, 2:8, 0:4], (8, 8, 8), mode="trilinear", align_corners=False)
    assert torch.allclose(out3, ref3, atol=1e-5)


# ------------------------------------------------------------------------------------ patch set and embeddings
def _tiny_unet(ndim=3):
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if ndim == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return PlainConvUNet(1, 3, (4, 8, 16), conv, 3, (1, 2, 2), 1, 2, 1, True, norm, {"affine": True}, None, None,
                         nn.LeakyReLU, {"inplace": True}, deep_supervision=True)


def test_patch_encoder_depth_keeps_two_voxels():
    class Enc:
        strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert patch_encoder_depth(Enc, (32, 32, 32)) == 5          # 32,16,8,4,2 (the 6th would be 1)
    Enc.strides = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]]
    assert patch_encoder_depth(Enc, (64, 64)) == 6
    Enc.strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert patch_encoder_depth(Enc, (2, 32, 32)) == 2             # the 3rd would leave 1 slice
    with pytest.raises(ValueError, match="contrast_patch_size"):
        patch_encoder_depth(Enc, (1, 32, 32))


def test_contrast_patch_size_is_capped_by_the_training_patch():
    assert contrast_patch_size(None, (16, 28, 36)) == (16, 28, 32)      # LA at 3.5 mm: no upsampling beyond it
    assert contrast_patch_size(None, (80, 112, 112)) == (32, 32, 32)    # the paper's 32³
    assert contrast_patch_size(None, (48, 512)) == (48, 64)            # 2D: 64², capped the same way
    assert contrast_patch_size(32, (16, 28, 36)) == (32, 32, 32)        # explicit: as given (_patch32 variant)
    assert contrast_patch_size((8, 16, 16), (16, 28, 36)) == (8, 16, 16)
    with pytest.raises(ValueError, match="3 entries"):
        contrast_patch_size((16, 16), (16, 28, 36))


def test_patch_set_shapes_and_unit_embeddings():
    torch.manual_seed(0)
    labels = torch.zeros(4, 16, 16, 16, dtype=torch.long)
    for b in range(3):  # image 3 is all background: no class-1 patches, no background edge/centre... but a whole
        labels[b, 3 + b:12, 4:13, 2:12] = 1
    regions = extract_regions(labels, 2, centre_erosion_iterations=1, generator=torch.Generator().manual_seed(0))
    masks = torch.stack([regions[r] for r in ("edge", "centre", "whole")], 2).flatten(0, 2)
    valid = masks.flatten(1).any(1)
    # 3 regions x 2 classes x 4 images = 24 at most; image 3: class 1 empty (3 patches), background has no boundary
    assert masks.shape[0] == 24 and valid.sum() == 24 - 3 - 1
    image_index = torch.arange(4).repeat_interleave(6)[valid]
    patches = crop_masked_patches(torch.randn(4, 1, 16, 16, 16), masks[valid], image_index, (32, 32, 32))
    assert patches.shape == (20, 1, 32, 32, 32)
    net = _tiny_unet()
    depth = patch_encoder_depth(net.encoder, (32, 32, 32))
    head = ProjectionHead(encoder_stage_channels(net.encoder, depth), 128, dim=3)
    features = encode_patches(net.encoder, patches, depth)
    z = head(features[:, :, None, None, None]).flatten(1)
    assert z.shape == (20, 128) and torch.allclose(z.norm(dim=1), torch.ones(20), atol=1e-5)


# --------------------------------------------------------------------------------------------------- SupCon
def test_supervised_contrastive_hand_values():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    classes = torch.tensor([0, 0, 1])
    not_self = ~torch.eye(3, dtype=torch.bool)
    positives = not_self & (classes[:, None] == classes[None, :])
    # anchors a and p: -log(e / (e + 1)); n has no positive and is excluded
    loss = supervised_contrastive_loss(z, z, not_self, positives, temperature=1.0)
    assert loss.item() == pytest.approx(0.31326, abs=1e-5)
    # two positives (sims 1, 0) and a negative (sim -1): mean of -log(e^s / (e + 1 + e^-1))
    a = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    two = supervised_contrastive_loss(a, c, torch.ones(1, 3, dtype=torch.bool),
                                      torch.tensor([[True, True, False]]), 1.0)
    assert two.item() == pytest.approx(0.90760, abs=1e-4)
    # a positive outside the candidate set is ignored: -log(e / (e + e^-1)) = log(1 + e^-2)
    outside = supervised_contrastive_loss(a, c, torch.tensor([[True, False, True]]),
                                          torch.tensor([[True, True, False]]), 1.0)
    assert outside.item() == pytest.approx(0.126928, abs=1e-5)


def test_supervised_contrastive_matches_cross_entropy_and_info_nce_at_tau_007():
    torch.manual_seed(1)
    anchors, pos, neg = torch.randn(5, 8), torch.randn(5, 8), torch.randn(4, 8)
    candidates = torch.cat((pos, neg))
    pos_mask = torch.cat((torch.eye(5, dtype=torch.bool), torch.zeros(5, 4, dtype=torch.bool)), 1)
    cand_mask = pos_mask | torch.cat((torch.zeros(5, 5, dtype=torch.bool), torch.ones(5, 4, dtype=torch.bool)), 1)
    ours = supervised_contrastive_loss(anchors, candidates, cand_mask, pos_mask, 0.07)
    a, p, n = (F.normalize(t, dim=1) for t in (anchors, pos, neg))
    logits = torch.cat(((a * p).sum(1, keepdim=True), a @ n.t()), 1) / 0.07
    reference = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.item() == pytest.approx(info_nce(anchors, pos, neg, 0.07).item(), rel=1e-5)


def test_boclis_intra_and_inter_image_terms():
    # image 0: edge (1,0) class 0, centre (1,0) class 0, whole (0,1) class 1; image 1: whole (1,0) class 0
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    image, cls, region = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 2, 2])
    intra, inter = boclis_contrastive_loss(z, image, cls, region, 1.0, anchor_regions=[0])
    assert intra.item() == pytest.approx(0.31326, abs=1e-5)  # -log(e / (e + e^0))
    assert inter.item() == pytest.approx(0.0, abs=1e-6)       # only candidate: the class-0 positive
    # a class-1 queue entry (0,1) joins the inter-image negatives: -log(e / (e + 1))
    _, inter_q = boclis_contrastive_loss(z, image, cls, region, 1.0, [0], torch.tensor([[0.0, 1.0]]),
                                         torch.tensor([1]))
    assert inter_q.item() == pytest.approx(0.31326, abs=1e-5)
    # an image with only an edge anchor and no other patches has no intra positives: 0, no NaN
    intra0, _ = boclis_contrastive_loss(z[3:], image[3:], cls[3:], torch.tensor([0]), 1.0, [0])
    assert intra0.item() == 0.0


def test_class_memory_queue_is_fifo_per_class():
    q = ClassMemoryQueue(num_classes=2, size=3, dim=2)
    q.push(torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]]), torch.tensor([0, 0, 1, 0]))
    q.push(torch.tensor([[5.0, 0], [6, 0]]), torch.tensor([0, 0]))
    emb, cls = q.contents()
    assert sorted(emb[cls == 0][:, 0].tolist()) == [4.0, 5.0, 6.0]   # 1 and 2 were pushed out
    assert emb[cls == 1][:, 0].tolist() == [3.0]
    assert q.pointer.tolist() == [2, 1]
    # more than `size` new entries of a class at once: only the last `size` stay, written from the pointer on
    q.push(torch.tensor([[7.0, 0], [8, 0], [9, 0], [10, 0], [11, 0]]), torch.tensor([0, 1, 0, 0, 0]))
    emb_all, cls_all, filled = q.slots()
    assert emb_all[:3, 0].tolist() == [10.0, 11.0, 9.0] and q.pointer.tolist() == [2, 2]
    assert emb_all[3:, 0].tolist() == [3.0, 8.0, 0.0] and filled.tolist() == [True] * 5 + [False]
    assert cls_all.tolist() == [0, 0, 0, 1, 1, 1]
    emb, cls = q.contents()
    restored = ClassMemoryQueue(2, 3, 2)
    restored.load_state_dict(q.state_dict())
    assert torch.equal(restored.contents()[0], emb)


# -------------------------------------------------------------------------------------------- gradient routing
def test_contrastive_gradient_reaches_encoder_and_head_only():
    torch.manual_seed(0)
    net = _tiny_unet()
    labels = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    labels[0, 2:12, 3:13, 4:14] = 1
    labels[1, 5:15, 1:9, 2:12] = 1
    images = torch.randn(2, 1, 16, 16, 16)
    regions = extract_regions(labels, 2, centre_erosion_iterations=1, generator=torch.Generator().manual_seed(0))
    masks = torch.stack([regions[r] for r in ("edge", "centre", "whole")], 2).flatten(0, 2)
    image_idx = torch.arange(2).repeat_interleave(6)
    class_idx = torch.arange(2).repeat_interleave(3).repeat(2)
    region_idx = torch.arange(3).repeat(4)
    keep = masks.flatten(1).any(1)
    depth = patch_encoder_depth(net.encoder, (16, 16, 16))
    head = ProjectionHead(encoder_stage_channels(net.encoder, depth), 16, dim=3)
    patches = crop_masked_patches(images, masks[keep], image_idx[keep], (16, 16, 16))
    z = head(encode_patches(net.encoder, patches, depth)[:, :, None, None, None]).flatten(1)
    intra, inter = boclis_contrastive_loss(z, image_idx[keep], class_idx[keep], region_idx[keep], 0.07, [0])
    (intra + inter).backward()
    assert intra.item() > 0 and inter.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert net.encoder.stages[0][0].convs[0].conv.weight.grad.abs().sum() > 0
    # UNetDecoder holds a reference to the encoder: check only the decoder's own modules
    decoder_only = [p for m in (net.decoder.stages, net.decoder.transpconvs, net.decoder.seg_layers)
                    for p in m.parameters()]
    assert decoder_only and all(p.grad is None or p.grad.abs().sum() == 0 for p in decoder_only)


def test_pseudo_label_loss_reaches_whole_student_and_no_teacher():
    torch.manual_seed(0)
    student = _tiny_unet(ndim=2)
    trainer = _FakeTrainer((0.999, 0.9))
    trainer.network = student
    teachers = trainer.build_teachers()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(t(x)[0], 1) for t in teachers.values()])
    agg = aggregate_teacher_predictions(probs)
    assert not agg.labels.requires_grad and not agg.reliability.requires_grad
    loss = reliability_weighted_cross_entropy(student(x)[0], agg.labels, agg.reliability)
    loss.backward()
    assert all(p.grad is not None for p in student.decoder.seg_layers[-1].parameters())
    assert all(p.grad is not None for p in student.decoder.stages.parameters())
    assert student.encoder.stages[0][0].convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for t in teachers.values() for p in t.parameters())


def _pseudo_label_loss_case(**attrs):
    """A bare BoCLIS trainer with nnU-Net's deep-supervision weights (0.8, 0.2), and the case both tests below work
    out by hand: logits (0, ln 3), so p = (1/4, 3/4) everywhere; left half label 0 with r = 1, right half label 1
    with r = 1/2; sample 0 is labelled and must not count. Returns (trainer, level(size), labels, reliability,
    the reliability-weighted CE of one level (2·ln 4 + ln(4/3)) / 3)."""
    from types import SimpleNamespace

    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    trainer = object.__new__(type("BareBoCLIS", (nnUNetTrainerBoCLIS,), dict(attrs)))
    trainer.loss = DeepSupervisionWrapper(lambda *a: None, [0.8, 0.2])
    trainer.configuration_manager = SimpleNamespace(batch_dice=True)
    trainer.is_ddp = False

    def level(size):
        logits = torch.zeros(2, 2, size, size)
        logits[:, 1] = math.log(3.0)
        logits[0] = 100.0  # the labelled sample: must not count
        return logits
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[..., 2:] = 1
    reliability = torch.ones(1, 4, 4)
    reliability[..., 2:] = 0.5
    return trainer, level, labels, reliability, (2 * math.log(4) + math.log(4 / 3)) / 3


def test_pseudo_label_loss_hand_value_over_deep_supervision():
    """CE only: each level's Σ r·CE / Σ r, summed with the weights (0.8, 0.2); a level with weight 0 is skipped."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    trainer, level, labels, reliability, value = _pseudo_label_loss_case(use_pseudo_label_dice=False)
    loss = trainer.pseudo_label_loss([level(4), level(2)], 1, labels, reliability)
    assert loss.item() == pytest.approx(value, rel=1e-5)
    trainer.loss = DeepSupervisionWrapper(lambda *a: None, [1.0, 0.0])
    bad = level(2)
    bad[1, 1] = -50.0  # a level with weight 0 would add a huge loss
    assert trainer.pseudo_label_loss([level(4), bad], 1, labels, reliability).item() == pytest.approx(value, rel=1e-5)


def test_pseudo_label_loss_with_its_default_dice_term_hand_value():
    """The default L_u (weighted CE + soft Dice, the Dice unweighted, foreground only, batch Dice). p_fg = 3/4
    everywhere and the right half is foreground: at 4 x 4, Σp·y = 8·3/4 = 6, Σp = 12, Σy = 8, so the soft Dice is
    (2·6)/(12 + 8) = 0.6 and the term adds 1 − 0.6 = 0.4; at 2 x 2 (nearest downsampling keeps the right column)
    1.5, 3 and 2 give 0.6 again. Per level CE + 0.4, with the weights (0.8, 0.2): CE + 0.4."""
    assert nnUNetTrainerBoCLIS.use_pseudo_label_dice  # the default this test pins down
    trainer, level, labels, reliability, ce = _pseudo_label_loss_case()
    loss = trainer.pseudo_label_loss([level(4), level(2)], 1, labels, reliability)
    assert loss.item() == pytest.approx(ce + 0.4, rel=1e-5)
