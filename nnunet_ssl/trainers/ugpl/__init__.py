"""``nnUNetTrainerUGPL``: dual networks with uncertainty-guided pseudo-labelling (seed 003, spec ``ugpl.md``).

Two students (A = PlainConvUNet, B = ResidualEncoderUNet with a ResNet34-like encoder, from the plans) train on the
same labelled + unlabelled tensors. Per network: nnU-Net's Dice+CE plus α·L_cr (MCF cross-reliable term). Between
them: a union pseudo-label on unlabelled voxels filtered by a per-batch entropy percentile (CCE, L_u rescaled by
N/N_kept), KL-rectified cross pseudo supervision ``mean(exp(-KL)·CE) + mean(KL)`` (symmetric by default), a cosine
consistency term, and on the network that is worse on the labelled batch (the loser) a prototype alignment of its
uncertain voxels' decoder features. Prediction averages both networks' softmax (``DualNetwork``).

The *intended* method is implemented, not the authors' code (spec §6): L_u is CE on logits with gradient, L_c keeps
its gradient (only statistics are under no_grad), entropy is computed on probabilities, the prototype term pushes
classes apart instead of pulling them together.

Modules: ``losses`` (equations), ``trainer``, ``variants`` (ablations, ``_tiny``).
"""
from nnunet_ssl.trainers.ugpl.losses import *  # noqa: F401,F403
from nnunet_ssl.trainers.ugpl.trainer import *  # noqa: F401,F403
from nnunet_ssl.trainers.ugpl.variants import *  # noqa: F401,F403
