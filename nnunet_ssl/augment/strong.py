"""Strong view of an unlabelled batch, built on the device from the weak view.

Order (CRLN's, seed 001 §1.4; operations a method does not use have probability 0): in-plane rescale and rot90/flip
(one affine resampling about the patch centre), CutMix within the batch, then intensity operations. Every geometric
operation is recorded in ``StrongViewParams`` and applied identically to pseudo-labels and confidence maps
(``apply_to_targets``), so a teacher prediction on the weak view stays aligned with the student's input. Doing the
rot90/flip before instead of after CutMix gives the same distribution of views (a random box stays a random box),
and intensity operations act voxel-wise, so they commute with the geometry.

Intensity operations are defined on the image min-max mapped to [0, 1] per sample and channel, then mapped back to
the image's own range, so that on nnU-Net-normalised data (z-scored MRI, CT windows) they do what the papers'
operations do on their [0, 1] data:

* brightness ``x01 · f`` (torchvision's ColorJitter brightness: scaling towards black), clipped to [0, 1];
* contrast ``(x01 - mean) · f + mean`` (ColorJitter contrast: scaling around the mean grey), clipped to [0, 1];
* Gaussian noise ``N(0, σ²)`` clipped to ±c, in units of the [0, 1] range (σ = 0.1 there is 0.1 · (max - min)
  of the nnU-Net image).
"""
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet_ssl.sync_marker import host_only


def _host_rng(generator: Optional[torch.Generator]) -> random.Random:
    """A Python RNG seeded from torch's (global or given) generator: reproducible with a generator, and seeded by
    ``torch.manual_seed`` otherwise. Used for draws torch's generator API cannot make (Beta, choices)."""
    with host_only():
        return random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=generator).item()))


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


def in_plane_axes(ndim: int, through_plane_axis: Optional[int]) -> List[int]:
    """The spatial axes that rescale and rot90/flip act on: all but the through-plane axis."""
    return [a for a in range(ndim) if a != through_plane_axis]


def rot90_matrix(spatial_shape: Sequence[int], i: int, j: int, k: int) -> torch.Tensor:
    """A (n, n) for ``out(p) = in(A p)``: the content turned by k·90° in the (i, j) plane about the patch centre,
    in voxel units, so a non-square plane is cropped and padded back to its shape rather than stretched.

    One step in voxel units takes (u_i, u_j) to (-u_j, u_i); in normalised coordinates p = u / h (h: half-side per
    axis) that is p_i -> -(h_j / h_i)·p_j, p_j -> (h_i / h_j)·p_i."""
    ndim = len(spatial_shape)
    ratio = float(spatial_shape[j]) / float(spatial_shape[i])
    rot = torch.eye(ndim, dtype=torch.float64)
    for _ in range(k % 4):
        step = torch.eye(ndim, dtype=torch.float64)
        step[i, i] = step[j, j] = 0.0
        step[i, j], step[j, i] = -ratio, 1.0 / ratio
        rot = step @ rot
    return rot


def affine_matrices(batch_size: int, spatial_shape: Sequence[int], through_plane_axis: Optional[int],
                    p_rescale: float, rescale_range: Tuple[float, float], p_rot_flip: float,
                    generator: Optional[torch.Generator] = None,
                    rotate_non_square: bool = True) -> Optional[torch.Tensor]:
    """Per-sample matrices A (B, n, n) in spatial-axis order with ``out(p) = in(A p)`` in normalised coordinates
    about the patch centre, or None when no sample is transformed.

    Rescale: the content is zoomed by s ~ U(rescale_range) on the in-plane axes (A = 1/s there). rot90/flip: a
    rotation by k·90° (k ~ {0..3}) in voxel space and a flip of one in-plane axis. On a non-square in-plane patch the
    rotated content is cropped and padded back to the patch shape about its centre (normalised coordinates are
    scaled per axis, so the rotation is conjugated with the half-sides: ``D⁻¹ R D``); padded voxels become ignore
    in the targets (``StrongViewParams.apply_to_targets``). Nearest-neighbour targets land exactly on voxel centres
    when the two in-plane sides have the same parity (half a voxel off otherwise). ``rotate_non_square=False``
    keeps k = 0 on non-square planes (before 0.2). The through-plane axis is never changed."""
    ndim = len(spatial_shape)
    axes = in_plane_axes(ndim, through_plane_axis)
    rng = _host_rng(generator) if (p_rescale > 0 or p_rot_flip > 0) else None
    mats, changed = [], False
    for _ in range(batch_size):
        a = torch.eye(ndim, dtype=torch.float64)
        if rng is not None and rng.random() < p_rescale:
            s = rng.uniform(*rescale_range)
            for ax in axes:
                a[ax, ax] = 1.0 / s
            changed = True
        if rng is not None and len(axes) == 2 and rng.random() < p_rot_flip:
            i, j = axes
            k = rng.randrange(4)
            if not rotate_non_square and spatial_shape[i] != spatial_shape[j]:
                k = 0
            rot = rot90_matrix(spatial_shape, i, j, k)
            flip = torch.eye(ndim, dtype=torch.float64)
            f_ax = rng.choice(axes)
            flip[f_ax, f_ax] = -1.0
            a = a @ rot @ flip
            changed = True
        mats.append(a)
    return torch.stack(mats).float() if changed else None


def _resample(x: torch.Tensor, matrices: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``out(p) = x(A p)`` per sample with torch's grid_sample (x: (B, C, *spatial), A in spatial-axis order)."""
    ndim = x.ndim - 2
    flip = list(range(ndim - 1, -1, -1))  # grid coordinates are (W, H[, D]): the reverse of the spatial axes
    theta = torch.zeros((x.shape[0], ndim, ndim + 1), dtype=torch.float32)
    theta[:, :, :ndim] = matrices[:, flip][:, :, flip]
    with host_only():  # host-built matrices copied without waiting for the device
        theta = theta.to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


@dataclass
class StrongViewParams:
    """What the strong view did to the geometry: an affine resampling (None: none) and CutMix partner indices and
    box masks (None when CutMix was skipped)."""
    mix_partner: Optional[torch.Tensor] = None  # (B,) long: sample b takes its box content from sample partner[b]
    mix_mask: Optional[torch.Tensor] = None     # (B, *spatial) bool: True where the partner's content is pasted
    affine: Optional[torch.Tensor] = None       # (B, n, n) host matrices, see affine_matrices

    def apply_to_targets(self, *targets: torch.Tensor) -> List[torch.Tensor]:
        """Transform pseudo-labels/confidences exactly as the images were transformed.

        Each target is (B, *spatial) or (B, C, *spatial). Resampling is nearest-neighbour; voxels that come from
        outside the patch become -1 (ignore) in integer targets, 0 in float targets and False in masks."""
        return [self._mix(self._warp(t)) for t in targets]

    def _warp(self, t: torch.Tensor) -> torch.Tensor:
        if self.affine is None:
            return t
        spatial_ndim = self.affine.shape[-1]
        squeeze = t.ndim == spatial_ndim + 1
        x = t[:, None] if squeeze else t
        if t.dtype == torch.bool:
            out = _resample(x.float(), self.affine, "nearest", "zeros") > 0.5
        elif t.dtype.is_floating_point:
            out = _resample(x, self.affine, "nearest", "zeros")
        else:  # shift by one so that zero padding becomes -1 (ignore)
            out = (_resample(x.float() + 1, self.affine, "nearest", "zeros") - 1).round().to(t.dtype)
        return out[:, 0] if squeeze else out

    def _mix(self, t: torch.Tensor) -> torch.Tensor:
        if self.mix_mask is None:
            return t
        mask = self.mix_mask if t.ndim == self.mix_mask.ndim else self.mix_mask[:, None]
        return torch.where(mask, t[self.mix_partner], t)


@dataclass
class StrongAugmentation:
    """Strong view operations; probabilities and strengths are fields (see the module docstring for the order and
    for how intensities are defined)."""
    # geometry
    p_rescale: float = 0.0
    rescale_range: Tuple[float, float] = (0.5, 1.5)          # in-plane zoom s (CRLN)
    p_rot_flip: float = 0.0                                  # rot90 + flip in-plane (CRLN)
    rotate_non_square: bool = True                           # False: quarter turns only on square planes (< 0.2)
    through_plane_axis: Optional[int] = None                 # set by the trainer from the plans (3D only)
    # CutMix
    p_cutmix: float = 1.0
    cutmix_area_ratio: Tuple[float, float] = (0.25, 0.5)     # box fraction of the patch, per sample
    cutmix_area_beta: Optional[Tuple[float, float]] = None   # CRLN: fraction 1 - λ, λ ~ Beta(a, b), once per batch
    cutmix_full_through_plane: bool = False                  # CRLN: the box spans the through-plane axis
    # intensity, on the [0, 1]-mapped image
    p_brightness: float = 0.8
    brightness_range: Tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.5
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    p_noise: float = 0.5
    noise_std: float = 0.1
    noise_clip: float = 0.2

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, StrongViewParams]:
        """images: (B, C, *spatial). Returns the strong view and what was done to its geometry."""
        b = images.shape[0]
        spatial = tuple(images.shape[2:])
        params = StrongViewParams()
        out = images
        params.affine = affine_matrices(b, spatial, self.through_plane_axis, self.p_rescale, self.rescale_range,
                                        self.p_rot_flip, generator, self.rotate_non_square)
        if params.affine is not None:
            out = _resample(out, params.affine, "bilinear", "reflection")
        with host_only():
            mix = b > 1 and self.p_cutmix > 0 and torch.rand((), generator=generator).item() < self.p_cutmix
            # a random non-zero roll: every sample gets a partner other than itself (CRLN's plain permutation is
            # the identity half the time for B=2)
            shift = int(torch.randint(1, b, (1,), generator=generator).item()) if mix else 0
            area = self.cutmix_area_ratio
            if mix and self.cutmix_area_beta is not None:
                fraction = 1.0 - _host_rng(generator).betavariate(*self.cutmix_area_beta)
                area = (fraction, fraction)
        if mix:
            partner = torch.roll(torch.arange(b, device=images.device), shift)
            axis = self.through_plane_axis if self.cutmix_full_through_plane else None
            mask = cutmix_boxes(b, spatial, area, axis, generator, device=images.device)
            out = torch.where(mask[:, None], out[partner], out)
            params.mix_partner, params.mix_mask = partner, mask
        return self.photometric(out, generator), params

    def photometric(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.p_brightness <= 0 and self.p_contrast <= 0 and (self.p_noise <= 0 or self.noise_std <= 0):
            return images
        b = images.shape[0]
        view = (b,) + (1,) * (images.ndim - 1)
        dev, dt = images.device, images.dtype

        def per_sample(p, lo, hi):
            with host_only():  # drawn on the host, copied without waiting for the device
                apply = torch.rand(b, generator=generator) < p
                factor = torch.where(apply, lo + (hi - lo) * torch.rand(b, generator=generator), torch.ones(b))
            return (factor.to(dev, dt, non_blocking=True).view(view),
                    apply.to(dev, non_blocking=True).view(view))

        spatial_dims = tuple(range(2, images.ndim))
        lo = images.amin(dim=spatial_dims, keepdim=True)
        span = (images.amax(dim=spatial_dims, keepdim=True) - lo).clamp_min(1e-6)
        x = (images - lo) / span
        if self.p_brightness > 0:
            factor, _ = per_sample(self.p_brightness, *self.brightness_range)
            x = (x * factor).clamp(0, 1)
        if self.p_contrast > 0:
            factor, _ = per_sample(self.p_contrast, *self.contrast_range)
            mean = x.mean(dim=spatial_dims, keepdim=True)
            x = ((x - mean) * factor + mean).clamp(0, 1)
        if self.p_noise > 0 and self.noise_std > 0:
            _, apply = per_sample(self.p_noise, 1.0, 1.0)
            # drawn on the device unless a (CPU) generator pins the randomness for tests
            noise = torch.randn(images.shape, generator=generator,
                                device='cpu' if generator is not None else dev).to(dev, dt, non_blocking=True)
            x = x + (noise * self.noise_std).clamp(-self.noise_clip, self.noise_clip) * apply
        return x * span + lo
