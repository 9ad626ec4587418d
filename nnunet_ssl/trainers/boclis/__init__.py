"""``nnUNetTrainerBoCLIS``: boundary-guided contrastive learning (seed 002, spec ``specs/boclis.md``).

* K EMA teachers of one student, conservative → radical (α = 0.999, 0.99, 0.9; spec §2.1 [A]), all on the weak view.
  Their softmax outputs are merged per voxel with entropy-softmax weights ``w_k ∝ exp(-H(p_k)/T_u)``; the
  pseudo-label is ``argmax p̄`` and its reliability ``r = 1 - H(p̄)/log C`` (§2.2).
* Student on the strong view (same geometry, intensity-only: no CutMix, spec §3/§9):
  ``L = L_sup + λ_u(t)·L_u + λ_c(t)·L_con`` with ``L_u = Σ r·CE/Σ r + (1 - softDice)`` (deep-supervised like L_sup).
* Boundary-guided patches (``nnunet_ssl/losses/boundary.py``): per image and class an edge, a centre and a whole
  region, from the GT (labelled) or the aggregated pseudo-label (unlabelled); masked crops resized to 32³ / 64²
  (at most the training patch per axis), encoded by the student's encoder, global-average-pooled, projected
  (``ProjectionHead``) to 128-d.
* Supervised-contrastive InfoNCE (τ = 0.07) with edge-patch anchors, intra-image (same image: same class
  positive, other classes negative) plus inter-image (other images and an optional per-class FIFO queue), 1:1.
* Prediction: the plain planned network; ``network_weights`` = the student (spec §9 default), or the most
  conservative teacher with ``nnUNetTrainerBoCLIS_exportTeacher``.

Deviations (spec §9 allows or leaves open): the projection head is the shared ``ProjectionHead`` (1×1 convs with
LeakyReLU, no BatchNorm, L2-normalised) instead of Linear-BN-ReLU-Linear; patches are encoded down to the deepest
encoder stage that keeps ≥ 2 voxels per axis (nnU-Net's bottleneck would be 1 voxel for a 32³ crop, where
InstanceNorm is undefined); the crops are resized to no more than the training patch per axis (32³ crops of a
smaller patch add voxels, not detail; ``_patch32`` keeps the fixed size); the strong view is the weak view plus
nnU-Net's intensity transforms (noise, blur, gamma, ...) and the paper's ColorJitter brightness/contrast
(U(0.2, 1.8) on the [0, 1]-mapped image).

Limitation: the patch encoder pass uses the unwrapped student encoder outside DDP's forward, so multi-GPU (DDP)
training is untested and likely needs DDP's ``find_unused_parameters``/static-graph handling; single-GPU is the
supported set-up.

Modules: ``losses`` (equations), ``network`` (patch encoder, class memory queue), ``trainer``, ``variants``
(ablations, ``_tiny``).
"""
from nnunet_ssl.trainers.boclis.losses import *  # noqa: F401,F403
from nnunet_ssl.trainers.boclis.network import *  # noqa: F401,F403
from nnunet_ssl.trainers.boclis.trainer import *  # noqa: F401,F403
from nnunet_ssl.trainers.boclis.variants import *  # noqa: F401,F403
