import pytest
import torch

from nnunet_ssl.augment.strong import StrongAugmentation, cutmix_boxes


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


def test_noise_is_clipped_relative_to_image_std():
    g = torch.Generator().manual_seed(4)
    images = torch.randn(2, 1, 16, 16) * 5
    aug = StrongAugmentation(p_cutmix=0, p_brightness=0, p_contrast=0, p_noise=1.0, noise_std=10.0, noise_clip=0.2)
    out, _ = aug(images, generator=g)
    std = images.std(dim=(1, 2, 3), keepdim=True)
    assert ((out - images).abs() <= 0.2 * std + 1e-5).all()
    assert not torch.equal(out, images)


def test_brightness_factor_range():
    g = torch.Generator().manual_seed(5)
    images = torch.ones(64, 1, 2, 2)
    aug = StrongAugmentation(p_cutmix=0, p_brightness=1.0, brightness_range=(0.75, 1.25), p_contrast=0, p_noise=0)
    out, _ = aug(images, generator=g)
    factors = out[:, 0, 0, 0]
    assert factors.min() >= 0.75 and factors.max() <= 1.25 and factors.std() > 0
