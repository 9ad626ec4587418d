"""``nnUNetTrainerCDR``: CDR-Net, two collaborating networks with region-level contrastive distillation (seed 000).

Spec: ``specs/cdr.md``. The authors released inference code only; the training is MCF's loop [P] plus a
reconstruction of the paper's region-based contrastive distillation [A]:

* two networks from the plans (plain U-Net A and residual-encoder U-Net B, ``nnUNetTrainerDualSSL``) see the
  **same** batch (B_l labelled + B_u unlabelled), each with its own SGD + poly;
* MCF base: nnU-Net's supervised loss on both; the network with the lower (squared-denominator) Dice loss on the
  labelled images *leads* this step; a disagreement-masked review loss on labelled voxels; the leader's sharpened
  (T=0.1) unlabelled prediction is an MSE target for the other network only (sigmoid ramp);
* CDR: regions are non-overlapping windows (``avg_pool`` of size ``region_size``); a region has a pooled class
  probability vector and an embedding (pooled last decoder features -> projection head, L2-normalised).
  Inter-network InfoNCE pairs the same region of the same image in the two networks (negatives: every other
  region of the batch), intra-network InfoNCE pairs a region across two passes of one network (the second on a
  noisy copy of the input); each anchor is weighted by ``1 + β·disagreement`` of the two networks in that region;
  regional KD pulls the other network's region probabilities toward the leader's voxel-sharpened, region-averaged
  ones (sharpening after averaging would be a majority vote that erases structures smaller than a region);
  InfoNCE negatives exclude regions of the anchor's dominant class.

Total (one combined backward of L_A + L_B, so the inter term enters once per direction):
``sup_A + sup_B + 0.5(rev_A + rev_B) + λ(t)(cons + rkd) + λ_c(t)(NCE_A→B + NCE_B→A + intra_A + intra_B)``.

Validation and prediction use the ensemble (``DualNetwork``: mean of the two softmaxes); the logged ``loss`` /
``sup_loss`` is network A's supervised loss, ``sup_b_loss`` network B's.
"""
import math
from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.contrastive import info_nce
from nnunet_ssl.losses.one_hot import one_hot
from nnunet_ssl.modules.dual import DualNetwork
from nnunet_ssl.modules.features import DecoderFeatureTap, decoder_stage_channels
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output
from nnunet_ssl.trainers.dual_base import nnUNetTrainerDualSSL
from nnunet_ssl.trainers.tiny import TINY_SCHEDULE, UnmirroredValidation

NAN = float("nan")


# ------------------------------------------------------------------------------------------- MCF base terms [P]
def squared_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """MCF's Dice loss ``1 − (2Σpg + ε)/(Σp² + Σg² + ε)`` per foreground class (batch pooled), averaged.

    probs, onehot: (B, C, *spatial); valid: (B, *spatial) bool or None (voxels to count)."""
    p, g = probs[:, 1:].float(), onehot[:, 1:].float()
    if valid is not None:
        p, g = p * valid[:, None], g * valid[:, None]
    dims = [0] + list(range(2, p.ndim))
    dice = (2 * (p * g).sum(dims) + eps) / ((p * p).sum(dims) + (g * g).sum(dims) + eps)
    return (1 - dice).mean()


def leader_is_a(dice_loss_a: torch.Tensor, dice_loss_b: torch.Tensor) -> torch.Tensor:
    """1.0 where network A leads (lower labelled Dice loss; A wins ties), else 0.0 — a tensor, no host sync."""
    return (dice_loss_a <= dice_loss_b).float()


def disagreement_review_loss(probs: torch.Tensor, onehot: torch.Tensor, disagree: torch.Tensor) -> torch.Tensor:
    """MCF's contrastive-difference review ``Σ D·(p − y)² / (ΣD + 1e-16)`` on voxels where the nets disagree.

    (p − y)² is averaged over the foreground channels (for a binary task: (p_fg − y)²). disagree: (B, *spatial)."""
    sq = ((probs[:, 1:].float() - onehot[:, 1:].float()) ** 2).mean(1)
    d = disagree.float()
    return (d * sq).sum() / (d.sum() + 1e-16)


def sharpen(probs: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    """``p^{1/T} / Σ_c p^{1/T}`` along ``dim``, detached (a target). Computed as softmax(log p / T) (no underflow)."""
    with torch.no_grad():
        return torch.softmax(torch.log(probs.float().clamp_min(1e-12)) / temperature, dim=dim)


# --------------------------------------------------------------------------------------------- regions [A]
def region_kernel(spatial_shape: Sequence[int], region_size) -> Tuple[int, ...]:
    """Window size per axis: ``region_size`` (int or per-axis), clipped to the patch."""
    sizes = [region_size] * len(spatial_shape) if isinstance(region_size, int) else list(region_size)
    if len(sizes) != len(spatial_shape) or min(sizes) < 1:
        raise ValueError(f"region_size {region_size!r} does not fit a {len(spatial_shape)}D patch "
                         f"{tuple(spatial_shape)}; use a positive int or one per axis.")
    return tuple(min(s, d) for s, d in zip(sizes, spatial_shape))


def region_grid(spatial_shape: Sequence[int], region_size) -> Tuple[int, ...]:
    """Regions per axis: a partial window at the far border counts as a region (ceil)."""
    kernel = region_kernel(spatial_shape, region_size)
    return tuple(math.ceil(d / k) for d, k in zip(spatial_shape, kernel))


def pool_regions(x: torch.Tensor, region_size) -> torch.Tensor:
    """Average over non-overlapping windows: (B, C, *spatial) -> (B, C, *grid). Partial border windows average
    the voxels they hold."""
    kernel = region_kernel(x.shape[2:], region_size)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}.get(len(kernel))
    if pool is None:
        raise ValueError(f"regions need a 2D or 3D input, got shape {tuple(x.shape)}")
    return pool(x, kernel, kernel, ceil_mode=True)


def flatten_regions(pooled: torch.Tensor) -> torch.Tensor:
    """(B, C, *grid) -> (B·R, C); row b·R + r is region r (raster order) of image b, the same in every network."""
    return pooled.flatten(2).transpose(1, 2).reshape(-1, pooled.shape[1])


def voxel_disagreement(probs_a: torch.Tensor, probs_b: torch.Tensor, measure: str = "probability") -> torch.Tensor:
    """Per-voxel disagreement in [0, 1], (B, 1, *spatial): 'probability' = ½Σ_c|p_A − p_B| (for two classes
    |p_A,fg − p_B,fg|), 'argmax' = the decisions differ (MCF's XOR mask)."""
    if measure == "probability":
        return 0.5 * (probs_a.float() - probs_b.float()).abs().sum(1, keepdim=True)
    if measure == "argmax":
        return (probs_a.argmax(1, keepdim=True) != probs_b.argmax(1, keepdim=True)).float()
    raise ValueError(f"disagreement_measure must be 'probability' or 'argmax', got {measure!r}")


def disagreement_weights(region_disagreement: torch.Tensor, beta: float) -> torch.Tensor:
    """Anchor weights ``w_r = 1 + β·mean_{voxels∈r} disagreement``: inconsistent regions count more."""
    return 1.0 + beta * region_disagreement.detach().float()


def regional_info_nce(anchors: torch.Tensor, targets: torch.Tensor, temperature: float,
                      weights: torch.Tensor = None, region_class: torch.Tensor = None) -> torch.Tensor:
    """InfoNCE from each region to the same row of ``targets`` (positive); every other row is a negative, except,
    when ``region_class`` (R,) is given, rows whose dominant class is the anchor's (a neighbouring background
    region is no evidence against the anchor being background)."""
    n = anchors.shape[0]
    negatives = ~torch.eye(n, dtype=torch.bool, device=anchors.device)
    if region_class is not None:
        negatives &= region_class[:, None] != region_class[None, :]
    return info_nce(anchors, targets, targets, temperature, negative_mask=negatives, anchor_weights=weights)


def symmetric_region_nce(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, weights: torch.Tensor = None,
                         stop_gradient: str = "targets", lead_a: torch.Tensor = None,
                         region_class: torch.Tensor = None):
    """(NCE(z_A → z_B), NCE(z_B → z_A)) for position-aligned regions.

    stop_gradient: 'targets' — the target side is detached, so each direction trains only its anchor network;
    'leader' (MCF-faithful) — the leading network (``lead_a`` 1/0) is detached everywhere, only the other is
    pulled; 'none' — no detaching. ``region_class``: see ``regional_info_nce``."""
    if stop_gradient == "leader":
        if lead_a is None:
            raise ValueError("stop_gradient='leader' needs lead_a")
        # value unchanged, gradient scaled by 0 on the leader's side (no host sync to branch on)
        z_a = lead_a * z_a.detach() + (1 - lead_a) * z_a
        z_b = (1 - lead_a) * z_b.detach() + lead_a * z_b
    elif stop_gradient == "targets":
        return (regional_info_nce(z_a, z_b.detach(), temperature, weights, region_class),
                regional_info_nce(z_b, z_a.detach(), temperature, weights, region_class))
    elif stop_gradient != "none":
        raise ValueError(f"inter_stop_gradient must be 'targets', 'leader' or 'none', got {stop_gradient!r}")
    return (regional_info_nce(z_a, z_b, temperature, weights, region_class),
            regional_info_nce(z_b, z_a, temperature, weights, region_class))


def regional_kd_target(voxel_probs: torch.Tensor, region_size, temperature: float,
                       sharpen_first: bool = True) -> torch.Tensor:
    """The leader's region target (B·R, C): voxel probabilities sharpened at T, then averaged per region, so a
    region that is 30 % confidently foreground gets a foreground target near 0.3. ``sharpen_first=False``
    averages first and sharpens the region mean (before 0.2): a majority vote that sends a 30 % foreground
    region's target to about 0."""
    if sharpen_first:
        return flatten_regions(pool_regions(sharpen(voxel_probs, temperature), region_size))
    return sharpen(flatten_regions(pool_regions(voxel_probs, region_size)), temperature)


def weighted_mse(student: torch.Tensor, target: torch.Tensor, weights: torch.Tensor = None) -> torch.Tensor:
    """``mean_r w_r · mean_c (student − target)²`` over rows r (regions) and columns c (classes)."""
    sq = ((student.float() - target.float()) ** 2).mean(1)
    return (sq * weights).mean() if weights is not None else sq.mean()


def directed_by_leader(lead_a: torch.Tensor, loss_b_from_a: torch.Tensor, loss_a_from_b: torch.Tensor):
    """The term where the non-leader learns from the leader: B's term if A leads, else A's (sync-free select)."""
    return lead_a * loss_b_from_a + (1 - lead_a) * loss_a_from_b


class FirstNetworkOnly(DualNetwork):
    """Export of the single-network ablation: same state-dict keys as ``DualNetwork``, predicts with net A."""

    def forward(self, x):
        return self.net_a(x)


# ------------------------------------------------------------------------------------------------- trainer
class nnUNetTrainerCDR(nnUNetTrainerDualSSL):
    # --- MCF base [P] --------------------------------------------------------------------------------------
    unsup_weight = 0.1               # λ max, MCF consistency and regional KD
    unsup_rampup = 0.4               # sigmoid ramp (λ and λ_c) over this fraction of all iterations
    review_weight = 0.5              # weight of the disagreement review term (per network)
    sharpen_temperature = 0.1        # T of the leader's pseudo-labels (voxels and regions)
    use_mcf_consistency = True       # voxel MSE of the other net to the leader's sharpened prediction
    # --- CDR regions and contrast [A] -------------------------------------------------------------------
    region_size = 16                 # window edge (int or per axis); try 8 for small structures
    embedding_dim = 64               # projection head output (and hidden) width
    contrast_temperature = 0.1       # τ of the InfoNCE terms; alternatives 0.07, 0.2
    contrast_weight = 0.1            # λ_c max
    use_inter_contrast = True        # InfoNCE between the networks, same region
    use_intra_contrast = True        # InfoNCE between two passes of one network, same region
    use_regional_kd = True           # pooled predictions of the other net -> leader's sharpened ones
    regional_kd_sharpen_first = True  # sharpen voxels, then pool (keeps class proportions); False: pool, sharpen
    mask_same_class_negatives = True  # InfoNCE negatives exclude regions of the anchor's dominant class
    inter_stop_gradient = "targets"  # 'targets' | 'leader' (MCF-faithful: only the non-leader is pulled) | 'none'
    disagreement_measure = "probability"  # 'probability' (½Σ|p_A − p_B|) | 'argmax' (XOR fraction)
    disagreement_beta = 1.0          # β of w_r = 1 + β·disagreement
    intra_noise_std = 0.1            # second pass: input + clip(N(0, σ²), ±clip) (UA-MT RandomNoise)
    intra_noise_clip = 0.2
    intra_noisy_pass_grad = True     # False: the noisy pass is a no-grad target (InfoNCE clean -> noisy only), which
                                     # saves both networks' second backward (about a third of a CDR step)
    max_contrast_regions = 4096      # random subset of regions above this (the similarity matrix is N²)
    single_network = False           # ablation: net A alone (supervised + intra-network contrast)

    ssl_log_keys = ("sup_b_loss", "review_loss", "cons_loss", "rkd_loss", "inter_loss", "intra_loss",
                    "unsup_weight", "contrast_weight", "agreement", "a_led", "pseudo_label_dice",
                    "region_disagreement", "inter_nce", "intra_nce")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.leader_counts = {"a": 0, "b": 0}  # steps each network led; kept across --c
        self.feature_taps: Dict[str, DecoderFeatureTap] = {}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True) -> nn.Module:
        dual = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)
        return FirstNetworkOnly(dual.net_a, dual.net_b) if cls.single_network else dual

    # ------------------------------------------------------------------------------------------------ set-up
    def _networks(self) -> Tuple[str, ...]:
        return ("a",) if self.single_network else ("a", "b")

    def build_extra_modules(self) -> Dict[str, nn.Module]:
        heads = {}
        for k in ("a", "b"):
            net = getattr(self.student, f"net_{k}")
            dim = 3 if isinstance(net.decoder.seg_layers[-1], nn.Conv3d) else 2
            heads[f"head_{k}"] = ProjectionHead(decoder_stage_channels(net, -1), self.embedding_dim,
                                                self.embedding_dim, dim)
        return heads

    def initialize(self):
        super().initialize()
        self._setup_feature_taps()
        # the base puts every extra module into network A's optimizer; head B belongs to network B's
        head_b = list(self.extra_modules["head_b"].parameters())
        ids = {id(p) for p in head_b}
        for group in self.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        self.optimizer.param_groups = [g for g in self.optimizer.param_groups if g["params"]]
        self.extra_optimizers["net_b"].add_param_group({"params": head_b})

    def _setup_feature_taps(self):
        self.feature_taps = {k: DecoderFeatureTap(getattr(self.student, f"net_{k}"), [-1]) for k in ("a", "b")}

    def _forward_with_features(self, k: str, x: torch.Tensor):
        """(output, full-resolution last-decoder-stage features) of network k."""
        tap = self.feature_taps[k]
        tap.pop()
        out = self.forward_a(x) if k == "a" else self.forward_b(x)
        return out, tap.pop()[-1]

    def _region_embeddings(self, k: str, features: torch.Tensor) -> torch.Tensor:
        pooled = pool_regions(features, self.region_size)  # pool first: the head is 1x1, so this is cheap
        return flatten_regions(self.extra_modules[f"head_{k}"](pooled))

    # ------------------------------------------------------------------------------------------------ losses
    def compute_losses(self, data_l, target_l, data_u, truth_u):
        n_l = data_l.shape[0]
        x = torch.cat((data_l, data_u))  # both networks see the identical tensor: regions line up
        nets = self._networks()
        outs, feats = {}, {}
        for k in nets:
            outs[k], feats[k] = self._forward_with_features(k, x)
        losses, diag = {}, {}
        sup = {k: self.loss(self._labeled_part(outs[k], n_l), target_l) for k in nets}
        losses["sup"] = sup["a"]
        if not self.single_network:
            losses["sup_b"] = sup["b"]
        probs = {k: torch.softmax(first_output(outs[k]).float(), 1) for k in nets}
        lam = self.current_unsup_weight(self.unsup_weight, self.unsup_rampup)
        lam_c = self.current_unsup_weight(self.contrast_weight, self.unsup_rampup)
        diag["unsup_weight"] = torch.tensor(lam)
        diag["contrast_weight"] = torch.tensor(lam_c)

        # ---- MCF: leader, review, consistency (labelled part [:n_l], unlabelled part [n_l:])
        seg = (target_l[0] if isinstance(target_l, (list, tuple)) else target_l)[:, 0].long()
        valid = None
        if self.label_manager.has_ignore_label:
            valid = seg != self.label_manager.ignore_label
            seg = torch.where(valid, seg, torch.zeros_like(seg))
        num_classes = probs["a"].shape[1]
        onehot = one_hot(seg.clamp(0, num_classes - 1), num_classes)
        lead_a = None
        if not self.single_network:
            with torch.no_grad():
                lead_a = leader_is_a(squared_dice_loss(probs["a"][:n_l], onehot, valid),
                                     squared_dice_loss(probs["b"][:n_l], onehot, valid))
                disagree = probs["a"][:n_l].argmax(1) != probs["b"][:n_l].argmax(1)
                if valid is not None:
                    disagree &= valid
            losses["review"] = self.review_weight * (disagreement_review_loss(probs["a"][:n_l], onehot, disagree) +
                                                     disagreement_review_loss(probs["b"][:n_l], onehot, disagree))
            if self.use_mcf_consistency:
                p_a, p_b = probs["a"][n_l:], probs["b"][n_l:]
                losses["cons"] = lam * directed_by_leader(
                    lead_a, weighted_mse(p_b, sharpen(p_a, self.sharpen_temperature)),
                    weighted_mse(p_a, sharpen(p_b, self.sharpen_temperature)))
            with torch.no_grad():
                labels_a, labels_b = probs["a"][n_l:].argmax(1), probs["b"][n_l:].argmax(1)
                diag["agreement"] = (labels_a == labels_b).float().mean()
                diag["a_led"] = lead_a
                leader_labels = torch.where(lead_a.bool(), labels_a, labels_b)
                diag["pseudo_label_dice"] = pseudo_label_dice(leader_labels, truth_u, num_classes)
        else:
            diag.update(agreement=torch.tensor(NAN), a_led=torch.tensor(NAN), pseudo_label_dice=torch.tensor(NAN))

        # ---- CDR: regions of all B_l + B_u images
        q = {k: flatten_regions(pool_regions(probs[k], self.region_size)) for k in nets}
        z = {k: self._region_embeddings(k, feats[k]) for k in nets}
        if self.single_network:
            weights = torch.ones(q["a"].shape[0], device=x.device)
            diag["region_disagreement"] = torch.tensor(NAN)
        else:
            with torch.no_grad():
                region_d = flatten_regions(pool_regions(
                    voxel_disagreement(probs["a"], probs["b"], self.disagreement_measure), self.region_size))[:, 0]
            weights = disagreement_weights(region_d, self.disagreement_beta)
            diag["region_disagreement"] = region_d.mean()
        keep = None
        if weights.shape[0] > self.max_contrast_regions:
            keep = torch.randperm(weights.shape[0], device=x.device)[:self.max_contrast_regions]
        pick = (lambda t: t[keep]) if keep is not None else (lambda t: t)

        region_class = None
        if self.mask_same_class_negatives:
            with torch.no_grad():
                region_class = pick(sum(q.values()).argmax(1))
        if not self.single_network and self.use_regional_kd:
            def target(k):
                return regional_kd_target(probs[k].detach(), self.region_size, self.sharpen_temperature,
                                          self.regional_kd_sharpen_first)
            losses["rkd"] = lam * directed_by_leader(lead_a, weighted_mse(q["b"], target("a"), weights),
                                                     weighted_mse(q["a"], target("b"), weights))
        if not self.single_network and self.use_inter_contrast:
            nce_ab, nce_ba = symmetric_region_nce(pick(z["a"]), pick(z["b"]), self.contrast_temperature,
                                                  pick(weights), self.inter_stop_gradient, lead_a, region_class)
            losses["inter"] = lam_c * (nce_ab + nce_ba)
            diag["inter_nce"] = 0.5 * (nce_ab + nce_ba).detach()
        else:
            diag["inter_nce"] = torch.tensor(NAN)
        if self.use_intra_contrast:
            noise = (torch.randn_like(x) * self.intra_noise_std).clamp(-self.intra_noise_clip, self.intra_noise_clip)
            intra = []
            for k in nets:
                with torch.set_grad_enabled(self.intra_noisy_pass_grad):
                    _, feats_noisy = self._forward_with_features(k, x + noise)
                    z_noisy = self._region_embeddings(k, feats_noisy)
                if self.intra_noisy_pass_grad:
                    nce_1, nce_2 = symmetric_region_nce(pick(z[k]), pick(z_noisy), self.contrast_temperature,
                                                        pick(weights), "targets", region_class=region_class)
                    intra.append(0.5 * (nce_1 + nce_2))
                else:
                    intra.append(regional_info_nce(pick(z[k]), pick(z_noisy), self.contrast_temperature,
                                                   pick(weights), region_class))
            losses["intra"] = lam_c * sum(intra)
            diag["intra_nce"] = torch.stack(intra).mean().detach()
        else:
            diag["intra_nce"] = torch.tensor(NAN)
        return losses, diag

    @staticmethod
    def _labeled_part(output, n_l):
        return [o[:n_l] for o in output] if isinstance(output, (list, tuple)) else output[:n_l]

    # ------------------------------------------------------------------------------ leader statistics, --c
    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        a_led = float(result.get("a_led", NAN))
        if not math.isnan(a_led):
            self.leader_counts["a" if a_led > 0.5 else "b"] += 1
        return result

    def method_checkpoint_state(self) -> dict:
        return {"cdr_leader_counts": dict(self.leader_counts)}

    def load_method_checkpoint_state(self, checkpoint: dict) -> None:
        self.leader_counts = dict(checkpoint.get("cdr_leader_counts", {"a": 0, "b": 0}))


# ---------------------------------------------------------------------------------------------- ablations
class nnUNetTrainerCDR_noRegionalContrast(nnUNetTrainerCDR):
    """MCF base + regional KD, no InfoNCE."""
    use_inter_contrast = False
    use_intra_contrast = False


class nnUNetTrainerCDR_interOnly(nnUNetTrainerCDR):
    use_intra_contrast = False


class nnUNetTrainerCDR_intraOnly(nnUNetTrainerCDR):
    use_inter_contrast = False


class nnUNetTrainerCDR_singleNetwork(nnUNetTrainerCDR):
    """Network A alone: nnU-Net's supervised loss + intra-network regional contrast; predicts with A."""
    single_network = True


class nnUNetTrainerCDR_MCF(nnUNetTrainerCDR):
    """The parent method: MCF's losses only (no region terms)."""
    use_inter_contrast = False
    use_intra_contrast = False
    use_regional_kd = False


class nnUNetTrainerCDR_poolThenSharpen(nnUNetTrainerCDR):
    """Before 0.2: the regional KD target sharpens the region-mean probabilities (a majority vote per region)."""
    regional_kd_sharpen_first = False


class nnUNetTrainerCDR_allRegionNegatives(nnUNetTrainerCDR):
    """Before 0.2: every other region is an InfoNCE negative, also those of the anchor's dominant class."""
    mask_same_class_negatives = False


class nnUNetTrainerCDR_leaderStopGrad(nnUNetTrainerCDR):
    """MCF-faithful inter contrast: only the non-leading network is pulled."""
    inter_stop_gradient = "leader"


class nnUNetTrainerCDR_detachedNoisyPass(nnUNetTrainerCDR):
    """Cheaper intra term: the noisy pass runs without gradient and serves as the target only."""
    intra_noisy_pass_grad = False


class nnUNetTrainerCDR_sameArch(nnUNetTrainerCDR):
    """Both networks from the plans' architecture (two random initialisations) instead of plain + residual."""
    second_network = "same"


class nnUNetTrainerCDR_tiny(UnmirroredValidation, nnUNetTrainerCDR):
    """CPU smoke/test variant: 2 epochs x 3 iterations."""
    schedule_overrides = TINY_SCHEDULE
