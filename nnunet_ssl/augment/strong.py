"""Strong view of an unlabelled batch, built on the device from the weak (nnU-Net-augmented) view.

Every geometric operation returns what is needed to apply it identically to pseudo-labels and confidence maps
(``StrongViewParams.apply_to_targets``), so a teacher prediction on the weak view stays aligned with the
student's input.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from nnunet_ssl.sync_audit import host_only


def cutmix_boxes(batch_size: int, spatial_shape: Sequence[int], area_ratio_range: Tuple[float, float],
                 through_plane_axis: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 device=None) -> torch.Tensor:
    """Binary box masks (B, *spatial) for CutMix.

    The box volume fraction is drawn from ``area_ratio_range`` per sample; every box side is
    ``round(size * fraction**(1/n))`` over the n mixed axes, and the box is placed uniformly at random
    fully inside the patch. ``through_plane_axis`` (index into ``spatial_shape``), when given, is spanned fully
    (as CRLN does for the slice axis), and the fraction is then spread over the remaining axes.
    """
    ndim = len(spatial_shape)
    mixed_axes = [a for a in range(ndim) if a != through_plane_axis]
    masks = torch.zeros((batch_size, *spatial_shape), dtype=torch.bool, device=device)
    lo, hi = area_ratio_range
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"area_ratio_range must satisfy 0 <= lo <= hi <= 1, got {area_ratio_range}")
    for b in range(batch_size):
        slices = [slice(None)] * ndim
        with host_only():  # box geometry is drawn on the host; only the slice assignment touches the device
            frac = lo + (hi - lo) * torch.rand((), generator=generator).item()
            side_frac = frac ** (1.0 / len(mixed_axes))
            for a in mixed_axes:
                size = int(spatial_shape[a])
                side = min(size, max(0, int(round(size * side_frac))))
                start = int(torch.randint(0, size - side + 1, (1,), generator=generator).item())
                slices[a] = slice(start, start + side)
        masks[(b, *slices)] = True
    return masks


@dataclass
class StrongViewParams:
    """What the strong view did: CutMix partner indices and box masks (None when CutMix was skipped)."""
    mix_partner: Optional[torch.Tensor] = None  # (B,) long: sample b takes its box content from sample partner[b]
    mix_mask: Optional[torch.Tensor] = None     # (B, *spatial) bool: True where the partner's content is pasted

    def apply_to_targets(self, *targets: torch.Tensor) -> List[torch.Tensor]:
        """Mix pseudo-labels/confidences exactly as the images were mixed.

        Each target is (B, *spatial) or (B, C, *spatial)."""
        out = []
        for t in targets:
            if self.mix_mask is None:
                out.append(t)
                continue
            mask = self.mix_mask if t.ndim == self.mix_mask.ndim else self.mix_mask[:, None]
            out.append(torch.where(mask, t[self.mix_partner], t))
        return out


@dataclass
class StrongAugmentation:
    """CutMix within the batch, brightness/contrast and Gaussian noise; probabilities and strengths are fields.

    Intensity changes are relative to each image's own standard deviation, because nnU-Net images are
    z-scored or CT-normalised rather than in [0, 1].
    """
    p_cutmix: float = 1.0
    cutmix_area_ratio: Tuple[float, float] = (0.25, 0.5)
    cutmix_through_plane_axis: Optional[int] = None
    p_brightness: float = 0.8
    brightness_range: Tuple[float, float] = (0.75, 1.25)   # multiplicative
    p_contrast: float = 0.5
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.5
    noise_std: float = 0.1                                   # in units of the image's std
    noise_clip: float = 0.2

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, StrongViewParams]:
        """images: (B, C, *spatial) weak view. Returns the strong view and the mixing parameters."""
        b = images.shape[0]
        spatial = images.shape[2:]
        params = StrongViewParams()
        out = images
        with host_only():
            mix = b > 1 and self.p_cutmix > 0 and torch.rand((), generator=generator).item() < self.p_cutmix
            # a derangement-free random permutation: roll by a random non-zero offset so every sample gets a
            # partner other than itself (CRLN's plain permutation is the identity half the time for B=2)
            shift = int(torch.randint(1, b, (1,), generator=generator).item()) if mix else 0
        if mix:
            partner = torch.roll(torch.arange(b, device=images.device), shift)
            mask = cutmix_boxes(b, spatial, self.cutmix_area_ratio, self.cutmix_through_plane_axis, generator,
                                device=images.device)
            out = torch.where(mask[:, None], out[partner], out)
            params = StrongViewParams(partner, mask)
        out = self.photometric(out, generator)
        return out, params

    def photometric(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = images.shape[0]
        view = (b,) + (1,) * (images.ndim - 1)
        dev, dt = images.device, images.dtype

        def per_sample(p, lo, hi):
            with host_only():  # drawn on the host, copied without waiting for the device
                apply = torch.rand(b, generator=generator) < p
                factor = torch.where(apply, lo + (hi - lo) * torch.rand(b, generator=generator), torch.ones(b))
            return (factor.to(dev, dt, non_blocking=True).view(view),
                    apply.to(dev, non_blocking=True).view(view))

        dims = tuple(range(1, images.ndim))
        mean = images.mean(dim=dims, keepdim=True)
        std = images.std(dim=dims, keepdim=True).clamp_min(1e-6)
        out = images
        if self.p_brightness > 0:
            factor, _ = per_sample(self.p_brightness, *self.brightness_range)
            out = out * factor
        if self.p_contrast > 0:
            factor, _ = per_sample(self.p_contrast, *self.contrast_range)
            out = (out - mean) * factor + mean
        if self.p_noise > 0 and self.noise_std > 0:
            _, apply = per_sample(self.p_noise, 1.0, 1.0)
            # drawn on the device unless a (CPU) generator pins the randomness for tests
            noise = torch.randn(images.shape, generator=generator,
                                device='cpu' if generator is not None else dev).to(dev, dt, non_blocking=True)
            noise = noise * self.noise_std
            noise = noise.clamp(-self.noise_clip, self.noise_clip) * std
            out = out + noise * apply
        return out
