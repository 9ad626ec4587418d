"""``nnUNetTrainerCRLN``: Cooperative Rectification Learning Network (seed 001; spec ``specs/crln.md``).

A weak-to-strong Mean Teacher plus
* a multi-prototype **Dynamic Interaction Module** (DIM): learnable class prototypes ``P`` (1, C, M, F) attend to
  two neighbouring decoder stages (block I, then block II one stage finer); block II's proximity matrices become a
  holistic relationship map ``M(x)`` at the output resolution, trained with nnU-Net's CE + Dice on labelled data
  (the "learning stage");
* **rectification** of the teacher's pseudo-label logits from iteration ``T_rect`` on: ``z + (1 - a)·M(x)``, with a
  scalar ``a`` trained only by its own loss (eq. 16) and optimizer after the main step;
* **CPS**, a ReCo-style InfoNCE on a projection (spec §3.1 head: conv3, BN, ReLU, conv1) of the last decoder stage:
  anchors from uncertain voxels, negatives from other classes, positives mixing the class-mean embedding with the
  teacher's prototypes (eq. 13). Deviation from the authors' code: P̃ comes from the trained prototype queries, since
  the raw parameter's channel means never change (see ``prototype_queries``; ``_rawPrototypeDescriptor`` is the
  code's choice).
* the strong view's rot90 + flip (spec §1.4) also turns non-square in-plane patches, cropping and padding the
  rotated content back to the patch (padded voxels are ignored by the pseudo-label losses).

The deployed network (``build_network_architecture``) is ``CRLNNet``: the planned U-Net + DIM + ``a``; with deep
supervision off it returns the rectified logits, so stock ``nnUNetv2_predict`` with the exported teacher rectifies.
Defaults follow the authors' code where it differs from the paper (spec §8); the alternatives are attributes.
One exception, under test by a pre-registered rule: the CPS weight is 0.05, not the paper's 0.5 (``_paperCPSWeight``),
which let the contrastive term outweigh the supervised one in nnU-Net's training (measured on LA fold 0, see
``cps_weight``); 0.05 stays the default only if it scores higher on each of LA's confirmation folds 1 and 2.

Modules: ``losses`` (equations), ``network`` (``CRLNNet``: U-Net + DIM + rectifier), ``trainer``,
``variants`` (ablations, ``_tiny``).
"""
from nnunet_ssl.trainers.crln.losses import *  # noqa: F401,F403
from nnunet_ssl.trainers.crln.network import *  # noqa: F401,F403
from nnunet_ssl.trainers.crln.trainer import *  # noqa: F401,F403
from nnunet_ssl.trainers.crln.variants import *  # noqa: F401,F403
