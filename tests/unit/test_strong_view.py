import pytest
import torch

from nnunet_ssl.augment.strong import StrongAugmentation, _resample, affine_matrices, cutmix_boxes, rot90_matrix


def test_cutmix_box_geometry_3d():
    g = torch.Generator().manual_seed(0)
    masks = cutmix_boxes(4, (8, 16, 16), (0.125, 0.125), generator=g)
    for m in masks:
        idx = m.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        # a solid box: its voxel count equals its bounding-box volume; side = round(size * 0.125 ** (1/3)) = size/2
        assert m.sum() == torch.prod(hi - lo + 1)
        assert (hi - lo + 1).tolist() == [4, 8, 8]


def test_cutmix_box_spans_through_plane_axis():
    g = torch.Generator().manual_seed(1)
    masks = cutmix_boxes(3, (6, 10, 10), (0.25, 0.25), through_plane_axis=0, generator=g)
    for m in masks:
        assert m.any(dim=(1, 2)).all()          # every slice of axis 0 is in the box
        idx = m.nonzero()
        assert (idx.max(0).values - idx.min(0).values + 1)[1:].tolist() == [5, 5]


def test_cutmix_2d_and_bounds():
    g = torch.Generator().manual_seed(2)
    masks = cutmix_boxes(16, (7, 9), (0.0, 1.0), generator=g)
    assert masks.shape == (16, 7, 9)
    with pytest.raises(ValueError):
        cutmix_boxes(1, (4, 4), (0.5, 0.2))


def test_pseudo_labels_mixed_like_images():
    """The pasted image region and the pasted pseudo-label region come from the same partner, voxel by voxel."""
    g = torch.Generator().manual_seed(3)
    b, shape = 3, (6, 6, 6)
    # each sample's image and label hold its own index, so the source of every voxel is readable
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, 1, *shape).clone()
    labels = torch.arange(b).view(b, 1, 1, 1).expand(b, *shape).clone()
    aug = StrongAugmentation(p_cutmix=1.0, p_brightness=0, p_contrast=0, p_noise=0)
    strong, mix = aug(images, generator=g)
    (mixed_labels,) = mix.apply_to_targets(labels)
    assert torch.equal(strong[:, 0].long(), mixed_labels)
    assert (mix.mix_partner != torch.arange(b)).all()   # never its own partner
    assert mix.mix_mask.any()
    # per-class channel targets are mixed with the same mask
    onehot = torch.nn.functional.one_hot(labels, b).movedim(-1, 1)
    (mixed_onehot,) = mix.apply_to_targets(onehot)
    assert torch.equal(mixed_onehot.argmax(1), mixed_labels)


def test_no_cutmix_for_single_sample_and_identity_without_ops():
    images = torch.randn(1, 2, 4, 4)
    aug = StrongAugmentation(p_cutmix=1.0, p_brightness=0, p_contrast=0, p_noise=0)
    out, mix = aug(images)
    assert mix.mix_mask is None and torch.equal(out, images)
    labels = torch.zeros(1, 4, 4)
    assert mix.apply_to_targets(labels)[0] is labels


def test_noise_is_clipped_in_units_of_the_image_range():
    """Noise sigma and clip are defined on the [0, 1]-mapped image: clip 0.2 is 0.2 x (max - min) of the image."""
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 1, 16, 16) * 5
    aug = StrongAugmentation(p_cutmix=0, p_brightness=0, p_contrast=0, p_noise=1.0, noise_std=10.0, noise_clip=0.2)
    out, _ = aug(images, generator=g)
    span = images.amax(dim=(2, 3), keepdim=True) - images.amin(dim=(2, 3), keepdim=True)
    assert ((out - images).abs() <= 0.2 * span + 1e-4).all()
    assert ((out - images).abs() >= 0.2 * span - 1e-4).float().mean() > 0.9  # sigma 10 >> clip: almost all clipped


def _ramp_image():
    # one sample, values 0, 1, 2, 4 along the last axis: min 0, max 4
    return torch.tensor([0.0, 1.0, 2.0, 4.0]).view(1, 1, 1, 4)


def test_brightness_scales_towards_the_minimum_and_clips_at_the_maximum():
    """[0, 1]-mapped x01 = (0, .25, .5, 1); x 1.5 -> (0, .375, .75, 1 (clipped)); mapped back x 4."""
    aug = StrongAugmentation(p_cutmix=0, p_brightness=1.0, brightness_range=(1.5, 1.5), p_contrast=0, p_noise=0)
    out, _ = aug(_ramp_image())
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.5, 3.0, 4.0]), atol=1e-5)


def test_contrast_scales_around_the_mean_grey_and_clips():
    """x01 = (0, .25, .5, 1), mean .4375; (x01 - m) x 2 + m = (-.4375 -> 0, .0625, .5625, 1.5625 -> 1); x 4."""
    aug = StrongAugmentation(p_cutmix=0, p_brightness=0, p_contrast=1.0, contrast_range=(2.0, 2.0), p_noise=0)
    out, _ = aug(_ramp_image())
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.25, 2.25, 4.0]), atol=1e-5)


def test_intensity_operations_keep_each_images_own_range():
    """A shifted, scaled copy of an image gets the same [0, 1]-space change, mapped back to its own range."""
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = torch.rand(1, 1, 8, 8)
    aug = StrongAugmentation(p_cutmix=0, p_brightness=1.0, p_contrast=1.0, p_noise=1.0)
    a, _ = aug(x, generator=g1)
    b, _ = aug(x * 10 - 3, generator=g2)
    assert torch.allclose(b, a * 10 - 3, atol=1e-4)


def test_rescale_zooms_about_the_centre_and_targets_follow():
    """Zoom s = 2 on an 8-voxel ramp: output voxel i samples source 3.5 + (i - 3.5) / 2 (bilinear for the image,
    nearest for labels); the through-plane axis (0) is untouched."""
    ramp = torch.arange(8.0).view(1, 1, 1, 1, 8).expand(1, 1, 3, 8, 8).clone()
    labels = ramp[:, 0].long()
    aug = StrongAugmentation(p_rescale=1.0, rescale_range=(2.0, 2.0), through_plane_axis=0, p_cutmix=0,
                             p_brightness=0, p_contrast=0, p_noise=0)
    out, params = aug(ramp)
    expected = 3.5 + (torch.arange(8.0) - 3.5) / 2
    assert torch.allclose(out[0, 0, 1, 4], expected, atol=1e-5)
    (warped,) = params.apply_to_targets(labels)
    assert (warped[0, 1, 4].float() - expected).abs().max() <= 0.5 + 1e-6
    assert torch.equal(warped[0, 0], warped[0, 2])  # same in every slice


def test_zooming_out_pads_labels_with_ignore_and_confidence_with_zero():
    labels = torch.ones(1, 1, 8, 8, dtype=torch.long)
    conf = torch.ones(1, 1, 8, 8)
    reliable = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    aug = StrongAugmentation(p_rescale=1.0, rescale_range=(0.5, 0.5), through_plane_axis=0, p_cutmix=0,
                             p_brightness=0, p_contrast=0, p_noise=0)
    _, params = aug(torch.rand(1, 1, 1, 8, 8))
    warped_labels, warped_conf, warped_reliable = params.apply_to_targets(labels, conf, reliable)
    inner = (slice(None), slice(None), slice(2, 6), slice(2, 6))
    assert (warped_labels[inner] == 1).all() and (warped_conf[inner] == 1).all() and warped_reliable[inner].all()
    assert (warped_labels == -1).sum() == 64 - 16 and (warped_conf == 0).sum() == 48
    assert (~warped_reliable).sum() == 48 and warped_labels.dtype == torch.long


def test_rot90_and_flips_move_image_and_labels_together():
    """Image == label before the view; after rot90/flip (exact on a square in-plane grid) still image == label."""
    g = torch.Generator().manual_seed(11)
    labels = torch.randint(0, 5, (4, 3, 6, 6))
    images = labels[:, None].float()
    aug = StrongAugmentation(p_rot_flip=1.0, through_plane_axis=0, p_cutmix=1.0, cutmix_full_through_plane=True,
                             p_brightness=0, p_contrast=0, p_noise=0)
    changed = False
    for _ in range(5):
        out, params = aug(images, generator=g)
        (warped,) = params.apply_to_targets(labels)
        assert torch.allclose(out[:, 0], warped.float(), atol=1e-4)
        assert warped.min() >= 0  # nothing comes from outside the patch
        changed |= not torch.equal(out[:, 0, :, :, :], images[:, 0][params.mix_partner]) and \
            not torch.equal(out, images)
        assert params.mix_mask.all(dim=1).any() or params.mix_mask.any(dim=(2, 3)).all()  # spans axis 0
    assert changed


def test_cutmix_beta_area_is_drawn_once_per_batch():
    g = torch.Generator().manual_seed(12)
    aug = StrongAugmentation(p_cutmix=1.0, cutmix_area_beta=(4.0, 4.0), cutmix_full_through_plane=True,
                             through_plane_axis=0, p_brightness=0, p_contrast=0, p_noise=0)
    _, params = aug(torch.rand(4, 1, 5, 20, 20), generator=g)
    sizes = params.mix_mask.sum(dim=(1, 2, 3))
    assert (sizes == sizes[0]).all() and 0 < sizes[0] < 5 * 400
    assert params.mix_mask.all(dim=1).sum(dim=(1, 2)).eq(sizes // 5).all()  # full depth


def test_rot90_on_a_non_square_plane_crops_and_pads_instead_of_stretching():
    """2 x 4 plane, a quarter turn: the 4 x 2 rotated content, its middle two rows kept and one ignore column padded
    each side (worked by hand from torch.rot90(x, -1): [[4, 0], [5, 1], [6, 2], [7, 3]])."""
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 4)
    turn = rot90_matrix((2, 4), 0, 1, 1)[None].float()
    assert _resample(x, turn, "nearest", "zeros")[0, 0].tolist() == [[0, 5, 1, 0], [0, 6, 2, 0]]
    half = rot90_matrix((2, 4), 0, 1, 2)[None].float()
    assert _resample(x, half, "nearest", "zeros")[0, 0].tolist() == [[7, 6, 5, 4], [3, 2, 1, 0]]
    assert torch.equal(rot90_matrix((2, 4), 0, 1, 4), torch.eye(2, dtype=torch.float64))
    # on a square plane it is the plain rotation matrix
    assert rot90_matrix((5, 5), 0, 1, 1).tolist() == [[0.0, -1.0], [1.0, 0.0]]


def test_rot90_fires_on_non_square_patches_and_targets_follow():
    """LA's 3.5 mm patch (16 x 28 x 36, in-plane 28 x 36): quarter turns happen, and the pseudo-labels and
    confidences are warped exactly as the image; voxels rotated in from outside the patch are ignore (-1) / 0."""
    g = torch.Generator().manual_seed(3)
    mats = affine_matrices(64, (4, 28, 36), 0, 0.0, (1.0, 1.0), 1.0, g)
    quarter = (mats[:, 1, 1].abs() < 1e-6) & (mats[:, 1, 2].abs() > 0)
    assert quarter.any() and (~quarter).any()
    assert torch.allclose(mats[quarter][:, 1, 2].abs(), torch.tensor(36 / 28))

    labels = torch.randint(0, 3, (6, 4, 28, 36))
    images = labels[:, None].float()
    conf = torch.ones(6, 4, 28, 36)
    aug = StrongAugmentation(p_rot_flip=1.0, through_plane_axis=0, p_cutmix=0.0, p_brightness=0, p_contrast=0,
                             p_noise=0)
    out, params = aug(images, generator=g)
    warped, warped_conf = params.apply_to_targets(labels, conf)
    turned = (params.affine[:, 1, 1].abs() < 1e-6)
    assert turned.any()
    inside = warped >= 0
    assert torch.allclose(out[:, 0][inside], warped[inside].float(), atol=1e-4)
    # a quarter turn of 28 x 36 leaves (36 - 28) / 2 = 4 columns of ignore at each side of the wider axis
    assert (warped[turned] == -1).float().mean().item() == pytest.approx(8 / 36, abs=1e-6)
    assert torch.equal(warped_conf == 0, warped == -1)
