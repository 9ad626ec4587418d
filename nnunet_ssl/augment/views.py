"""Weak and strong views of the unlabelled stream, cut from nnU-Net's own training transforms.

The papers' teacher labels a *weak* view (crop, flip, at most rotation/scaling); intensity perturbation belongs to
the *strong* view the student sees. nnU-Net's ``get_training_transforms`` mixes both, so instead of writing a
pipeline of our own, its list is split by kind:

* weak view: every transform except the intensity ones (spatial transform, mirroring, masking, label handling,
  deep-supervision downsampling), so both views keep one crop geometry;
* strong view: the weak view plus nnU-Net's intensity transforms (noise, blur, brightness, contrast, simulated low
  resolution, gamma), run in the loader worker on a copy that is appended to the image channels
  (``AppendIntensityAugmentedCopy``); the trainer splits the channels again and adds the method's own strong
  operations (CutMix, ...) on the device.
"""
from typing import List, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

UNLABELED_VIEWS = ("weak", "nnunet")


def is_intensity_transform(transform: BasicTransform) -> bool:
    """An image-only transform (noise, blur, brightness, contrast, low resolution, gamma), bare or random-wrapped."""
    inner = transform.transform if isinstance(transform, RandomTransform) else transform
    return isinstance(inner, ImageOnlyTransform)


class AppendIntensityAugmentedCopy(BasicTransform):
    """``image`` (C, ...) -> (2C, ...): the image, then a copy that went through ``intensity_transforms``."""

    def __init__(self, intensity_transforms: List[BasicTransform]):
        super().__init__()
        self.intensity = ComposeTransforms(list(intensity_transforms))

    def apply(self, data_dict, **params):
        image = data_dict["image"]
        strong = self.intensity(image=image.clone())["image"]
        data_dict["image"] = torch.cat((image, strong))
        return data_dict


def split_training_transforms(training_transforms: ComposeTransforms, num_channels: int,
                              with_strong_copy: bool) -> Tuple[ComposeTransforms, int]:
    """nnU-Net's training pipeline without its intensity transforms (the weak view), optionally appending the
    intensity-augmented copy where those transforms stood. Returns (pipeline, image channels it outputs)."""
    intensity = [t for t in training_transforms.transforms if is_intensity_transform(t)]
    weak: List[BasicTransform] = []
    for t in training_transforms.transforms:
        if is_intensity_transform(t):
            if with_strong_copy and t is intensity[0]:
                weak.append(AppendIntensityAugmentedCopy(intensity))
            continue
        if with_strong_copy and isinstance(t, MaskImageTransform):
            # nnU-Net masks the normalised channels outside the non-zero region: do so in both copies
            t = MaskImageTransform(list(t.apply_to_channels) + [c + num_channels for c in t.apply_to_channels],
                                   t.channel_idx_in_seg, t.set_outside_to)
        weak.append(t)
    if with_strong_copy and not intensity:  # a pipeline without intensity transforms: the copy is the weak view
        position = next((i for i, t in enumerate(weak) if isinstance(t, MirrorTransform)), len(weak))
        weak.insert(position, AppendIntensityAugmentedCopy([]))
    return ComposeTransforms(weak), num_channels * (2 if with_strong_copy else 1)
