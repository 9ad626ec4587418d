"""Weak and strong views cut from nnU-Net's own training transforms (nnunet_ssl/augment/views.py)."""
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.augment.views import AppendIntensityAugmentedCopy, is_intensity_transform, split_training_transforms


def nnunet_pipeline(use_mask_for_norm=None):
    return nnUNetTrainer.get_training_transforms((16, 16, 16), (-0.5, 0.5), None, (0, 1, 2), False,
                                                 use_mask_for_norm=use_mask_for_norm)


def test_weak_view_drops_every_intensity_transform_and_keeps_the_rest():
    full = nnunet_pipeline()
    weak, channels = split_training_transforms(full, 1, with_strong_copy=False)
    assert channels == 1
    intensity = [t for t in full.transforms if is_intensity_transform(t)]
    assert len(intensity) == 7  # noise, blur, brightness, contrast, low resolution, 2 x gamma (nnU-Net 2.8)
    assert [t for t in weak.transforms if is_intensity_transform(t)] == []
    assert weak.transforms == [t for t in full.transforms if t not in intensity]


def test_strong_copy_replaces_the_intensity_transforms_before_mirroring():
    full = nnunet_pipeline(use_mask_for_norm=[True, False])
    pipeline, channels = split_training_transforms(full, 2, with_strong_copy=True)
    assert channels == 4
    kinds = [type(t) for t in pipeline.transforms]
    copy_at = kinds.index(AppendIntensityAugmentedCopy)
    assert copy_at < kinds.index(MirrorTransform)
    copier = pipeline.transforms[copy_at]
    assert copier.intensity.transforms == [t for t in full.transforms if is_intensity_transform(t)]
    mask = next(t for t in pipeline.transforms if isinstance(t, MaskImageTransform))
    assert mask.apply_to_channels == [0, 2]  # channel 0 of both copies


def test_both_copies_share_the_geometry_and_only_the_copy_is_perturbed():
    noise = RandomTransform(GaussianNoiseTransform(noise_variance=(0.5, 0.5)), apply_probability=1.0)
    assert isinstance(noise.transform, ImageOnlyTransform)
    pipeline, _ = split_training_transforms(ComposeTransforms([noise, MirrorTransform(allowed_axes=(0, 1))]), 1,
                                            with_strong_copy=True)
    image = torch.arange(16.0).view(1, 4, 4)
    seg = torch.zeros(1, 4, 4)
    for seed in range(6):
        torch.manual_seed(seed)
        out = pipeline(image=image.clone(), segmentation=seg.clone())["image"]
        weak, strong = out[:1], out[1:]
        assert weak.shape == image.shape and sorted(weak.flatten().tolist()) == image.flatten().tolist()
        # the noise-free strong copy would equal the weak view: its deviation is the noise only
        assert (strong - weak).abs().mean() > 0.1
    no_intensity, _ = split_training_transforms(ComposeTransforms([MirrorTransform(allowed_axes=(0, 1))]), 1, True)
    for seed in range(6):
        torch.manual_seed(seed)
        out = no_intensity(image=image.clone(), segmentation=seg.clone())["image"]
        assert torch.equal(out[0], out[1])
