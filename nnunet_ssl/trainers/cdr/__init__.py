"""``nnUNetTrainerCDR``: CDR-Net, two collaborating networks with region-level contrastive distillation (seed 000).

Spec: ``specs/cdr.md``. The authors released inference code only; the training is MCF's loop [P] plus a
reconstruction of the paper's region-based contrastive distillation [A]:

* two networks from the plans (plain U-Net A and residual-encoder U-Net B, ``nnUNetTrainerDualSSL``) see the
  **same** batch (B_l labelled + B_u unlabelled), each with its own SGD + poly;
* MCF base: nnU-Net's supervised loss on both; the network with the lower (squared-denominator) Dice loss on the
  labelled images *leads* this step; a disagreement-masked review loss on labelled voxels; the leader's sharpened
  (T=0.1) unlabelled prediction is an MSE target for the other network only (sigmoid ramp);
* CDR: regions are non-overlapping windows (``avg_pool`` of size ``region_size``; default the longest patch axis / 7,
  the spec's 16 at its 112 x 112 x 80 patch, so the grid does not collapse on coarse plans); a region has a pooled class
  probability vector and an embedding (pooled last decoder features -> projection head, L2-normalised).
  Inter-network InfoNCE pairs the same region of the same image in the two networks (negatives: every other
  region of the batch). The intra-network term (spec §4.3) pairs each region with the same region in a second
  stochastic pass of the same network (dropout p = 0.5 on the last decoder stage in every training pass, Gaussian
  noise σ 0.1 clipped to ±0.2 on the second pass's input), with InfoNCE and regional KD (the noisy pass matches
  the clean pass's sharpened region probabilities). ``_deepToShallowIntra`` is the spec's cheaper alternative
  (bottleneck vs last decoder stage in one pass). Each anchor is weighted by ``1 + β·disagreement`` (between the
  networks for the inter terms, between the passes for the intra KD);
  regional KD pulls the other network's region probabilities toward the leader's voxel-sharpened, region-averaged
  ones (sharpening after averaging would be a majority vote that erases structures smaller than a region);
  InfoNCE negatives exclude regions of the anchor's dominant class.

Total (one combined backward of L_A + L_B, so the inter term enters once per direction):
``sup_A + sup_B + 0.5(rev_A + rev_B) + λ(t)(cons + rkd) + λ_c(t)(NCE_A→B + NCE_B→A + intra_A + intra_B)``, where
``intra_k`` = the two-pass InfoNCE + regional KD of network k (logged as ``intra_loss`` and ``intra_kd_loss``).

Validation and prediction use the ensemble (``DualNetwork``: mean of the two softmaxes); the logged ``loss`` /
``sup_loss`` is network A's supervised loss, ``sup_b_loss`` network B's.

Modules: ``losses`` (equations), ``network`` (single-network export), ``trainer``, ``variants`` (ablations,
``_tiny``).
"""
from nnunet_ssl.trainers.cdr.losses import *  # noqa: F401,F403
from nnunet_ssl.trainers.cdr.network import *  # noqa: F401,F403
from nnunet_ssl.trainers.cdr.trainer import *  # noqa: F401,F403
from nnunet_ssl.trainers.cdr.variants import *  # noqa: F401,F403
