"""``nnUNetTrainerCDR``: two networks, MCF's loop plus region-level contrastive distillation."""
import math
from typing import Dict, Tuple

import torch
from torch import nn

from nnunet_ssl.diagnostics import pseudo_label_dice
from nnunet_ssl.losses.one_hot import one_hot
from nnunet_ssl.modules.features import DecoderFeatureTap, bottleneck_channels, decoder_stage_channels
from nnunet_ssl.modules.heads import ProjectionHead
from nnunet_ssl.trainers.base import first_output, split_batch
from nnunet_ssl.trainers.cdr.losses import (directed_by_leader, disagreement_review_loss, disagreement_weights,
                                            flatten_regions, leader_is_a, negative_share,
                                            patch_scaled_region_size, pool_regions, pool_regions_from_coarser,
                                            regional_info_nce, regional_kd_target, sharpen, squared_dice_loss,
                                            symmetric_region_nce, voxel_disagreement, weighted_mse)
from nnunet_ssl.trainers.cdr.network import FirstNetworkOnly, add_training_dropout
from nnunet_ssl.trainers.dual_base import nnUNetTrainerDualSSL


NAN = float("nan")


class nnUNetTrainerCDR(nnUNetTrainerDualSSL):
    # --- MCF base [P] --------------------------------------------------------------------------------------
    unsup_weight = 0.1               # λ max, MCF consistency and regional KD
    unsup_rampup = 0.4               # sigmoid ramp (λ and λ_c) over this fraction of all iterations
    review_weight = 0.5              # weight of the disagreement review term (per network)
    sharpen_temperature = 0.1        # T of the leader's pseudo-labels (voxels and regions)
    use_mcf_consistency = True       # voxel MSE of the other net to the leader's sharpened prediction
    # --- CDR regions and contrast [A] -------------------------------------------------------------------
    region_size = None               # window edge (int or per axis); None: scaled with the patch (below)
    regions_along_longest_axis = 7   # region_size None: edge = longest patch axis / 7, the spec's 16 at 112x112x80
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
    intra_pair = "noisy_pass"        # what the intra term pairs a region with (spec §4.3): 'noisy_pass' (the same
                                     # region in a second stochastic pass of the same network on a noisy copy: the
                                     # paper's term) or 'deep_to_shallow' (the same region of the bottleneck in the
                                     # same pass: the spec's cheaper alternative, `_deepToShallowIntra`)
    use_intra_kd = True              # 'noisy_pass': regional KD between the two passes as well as InfoNCE (§4.3)
    intra_noise_std = 0.1            # 'noisy_pass': input + clip(N(0, σ²), ±clip) (UA-MT RandomNoise)
    intra_noise_clip = 0.2
    intra_noisy_pass_grad = True     # False: the noisy pass is a no-grad target (InfoNCE clean -> noisy only), which
                                     # saves both networks' second backward (about a third of the two-pass step)
    dropout_p = 0.5                  # channel dropout on the last decoder stage's output in training (MCF's VNet,
                                     # spec §4.3 "both nets have dropout on"): the two passes differ by it and noise
    max_contrast_regions = 4096      # random subset of regions above this (the similarity matrix is N²)
    single_network = False           # ablation: net A alone (supervised + intra-network contrast)

    ssl_log_keys = ("sup_b_loss", "review_loss", "cons_loss", "rkd_loss", "inter_loss", "intra_loss", "intra_kd_loss",
                    "unsup_weight", "contrast_weight", "agreement", "a_led", "pseudo_label_dice",
                    "region_disagreement", "inter_nce", "intra_nce", "nce_negative_share")

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
            if self._deep_to_shallow():
                heads[f"bottleneck_head_{k}"] = ProjectionHead(bottleneck_channels(net), self.embedding_dim,
                                                               self.embedding_dim, dim)
        return heads

    @classmethod
    def _deep_to_shallow(cls) -> bool:
        if cls.intra_pair not in ("noisy_pass", "deep_to_shallow"):
            raise ValueError(f"{cls.__name__}.intra_pair must be 'noisy_pass' or 'deep_to_shallow', "
                             f"got {cls.intra_pair!r}")
        return cls.use_intra_contrast and cls.intra_pair == "deep_to_shallow"

    def initialize(self):
        super().initialize()
        self._setup_feature_taps()
        # the base puts every extra module into network A's optimizer; B's heads belong to network B's
        head_b = [p for name, m in self.extra_modules.items() if name.endswith("_b") for p in m.parameters()]
        ids = {id(p) for p in head_b}
        for group in self.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        self.optimizer.param_groups = [g for g in self.optimizer.param_groups if g["params"]]
        self.extra_optimizers["net_b"].add_param_group({"params": head_b})

    def _setup_feature_taps(self):
        for k in ("a", "b"):  # dropout first: hooks run in order, so the taps and the seg head see dropped features
            add_training_dropout(getattr(self.student, f"net_{k}"), self.dropout_p)
        self.feature_taps = {k: DecoderFeatureTap(getattr(self.student, f"net_{k}"), [-1], self._deep_to_shallow())
                             for k in ("a", "b")}

    def _forward_with_features(self, k: str, x: torch.Tensor):
        """(output, full-resolution last-decoder-stage features, bottleneck features or None) of network k."""
        tap = self.feature_taps[k]
        tap.pop()
        out = self.forward_a(x) if k == "a" else self.forward_b(x)
        features = tap.pop()
        return out, features[-1], features.get("bottleneck")

    def _region_size(self, spatial_shape):
        if self.region_size is not None:
            return self.region_size
        return patch_scaled_region_size(spatial_shape, self.regions_along_longest_axis)

    def _region_embeddings(self, k: str, features: torch.Tensor, region_size) -> torch.Tensor:
        pooled = pool_regions(features, region_size)  # pool first: the head is 1x1, so this is cheap
        return flatten_regions(self.extra_modules[f"head_{k}"](pooled))

    # ------------------------------------------------------------------------------------------------ losses
    def compute_losses(self, data_l, target_l, data_u, truth_u):
        n_l = data_l.shape[0]
        x = torch.cat((data_l, data_u))  # both networks see the identical tensor: regions line up
        nets = self._networks()
        outs, feats, deep_feats = {}, {}, {}
        for k in nets:
            outs[k], feats[k], deep_feats[k] = self._forward_with_features(k, x)
        losses, diag = {}, {}
        sup = {k: self.loss(split_batch(outs[k], n_l)[0], target_l) for k in nets}
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
        region_size = self._region_size(x.shape[2:])
        q = {k: flatten_regions(pool_regions(probs[k], region_size)) for k in nets}
        z = {k: self._region_embeddings(k, feats[k], region_size) for k in nets}
        if self.single_network:
            weights = torch.ones(q["a"].shape[0], device=x.device)
            diag["region_disagreement"] = torch.tensor(NAN)
        else:
            region_d = self._region_disagreement(probs["a"], probs["b"], region_size)
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
        with torch.no_grad():  # 0: the InfoNCE terms are inert (one dominant class in the batch)
            diag["nce_negative_share"] = negative_share(pick(weights).shape[0], region_class, num_classes)
        if not self.single_network and self.use_regional_kd:
            losses["rkd"] = lam * directed_by_leader(
                lead_a, weighted_mse(q["b"], self._regional_kd_target(probs["a"], region_size), weights),
                weighted_mse(q["a"], self._regional_kd_target(probs["b"], region_size), weights))
        if not self.single_network and self.use_inter_contrast:
            nce_ab, nce_ba = symmetric_region_nce(pick(z["a"]), pick(z["b"]), self.contrast_temperature,
                                                  pick(weights), self.inter_stop_gradient, lead_a, region_class)
            losses["inter"] = lam_c * (nce_ab + nce_ba)
            diag["inter_nce"] = 0.5 * (nce_ab + nce_ba).detach()
        else:
            diag["inter_nce"] = torch.tensor(NAN)
        if self.use_intra_contrast:
            deep_to_shallow = self._deep_to_shallow()
            if not deep_to_shallow:
                noise = (torch.randn_like(x) * self.intra_noise_std).clamp(-self.intra_noise_clip,
                                                                           self.intra_noise_clip)
            intra, intra_kd = [], []
            for k in nets:
                if deep_to_shallow:  # the same regions seen by the bottleneck of the same pass
                    pooled = pool_regions_from_coarser(deep_feats[k], x.shape[2:], region_size)
                    z_other = flatten_regions(self.extra_modules[f"bottleneck_head_{k}"](pooled))
                else:
                    with torch.set_grad_enabled(self.intra_noisy_pass_grad):
                        out_noisy, feats_noisy, _ = self._forward_with_features(k, x + noise)
                        z_other = self._region_embeddings(k, feats_noisy, region_size)
                    if self.use_intra_kd:
                        intra_kd.append(self._intra_regional_kd(
                            probs[k], torch.softmax(first_output(out_noisy).float(), 1), region_size))
                if deep_to_shallow or self.intra_noisy_pass_grad:
                    nce_1, nce_2 = symmetric_region_nce(pick(z[k]), pick(z_other), self.contrast_temperature,
                                                        pick(weights), "targets", region_class=region_class)
                    intra.append(0.5 * (nce_1 + nce_2))
                else:
                    intra.append(regional_info_nce(pick(z[k]), pick(z_other), self.contrast_temperature,
                                                   pick(weights), region_class))
            losses["intra"] = lam_c * sum(intra)
            if intra_kd:
                losses["intra_kd"] = lam_c * sum(intra_kd)
            diag["intra_nce"] = torch.stack(intra).mean().detach()
        else:
            diag["intra_nce"] = torch.tensor(NAN)
        return losses, diag

    def _intra_regional_kd(self, probs_clean: torch.Tensor, probs_noisy: torch.Tensor, region_size) -> torch.Tensor:
        """Regional KD between the two passes of one network (spec §4.3: the inter terms within a network): the
        pass with gradient matches the other's voxel-sharpened, region-averaged probabilities, each region weighted
        by ``1 + β·disagreement`` of the two passes. The noisy pass learns from the clean one; with a no-grad noisy
        pass (``intra_noisy_pass_grad=False``) the clean pass learns from it instead."""
        weights = disagreement_weights(self._region_disagreement(probs_clean, probs_noisy, region_size),
                                       self.disagreement_beta)
        student, teacher = (probs_noisy, probs_clean) if self.intra_noisy_pass_grad else (probs_clean, probs_noisy)
        return weighted_mse(flatten_regions(pool_regions(student, region_size)),
                            self._regional_kd_target(teacher, region_size), weights)

    def _region_disagreement(self, probs_1: torch.Tensor, probs_2: torch.Tensor, region_size) -> torch.Tensor:
        """Mean voxel disagreement of two predictions per region, (B·R,), no gradient (anchor weights)."""
        with torch.no_grad():
            return flatten_regions(pool_regions(
                voxel_disagreement(probs_1, probs_2, self.disagreement_measure), region_size))[:, 0]

    def _regional_kd_target(self, probs: torch.Tensor, region_size) -> torch.Tensor:
        """The regional KD target of a prediction (detached): voxel-sharpened at T, region-averaged."""
        return regional_kd_target(probs.detach(), region_size, self.sharpen_temperature,
                                  self.regional_kd_sharpen_first)

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
