"""Offline self-training: nnU-Net's maintainers' recipe as one command (``nnUNetv2_ssl_self_train``).

1. A labelled-only model of the fold (stock ``nnUNetTrainer``, or any nnU-Net model folder) predicts every
   unlabelled case of the fold with nnU-Net's ``nnUNetPredictor`` (sliding window, Gaussian weighting, test-time
   mirroring) on the already preprocessed arrays (``store``).
2. Argmax labels and confidences (max softmax probability) are stored as a preprocessed nnU-Net dataset in a new
   folder of ``nnUNet_preprocessed/DatasetXXX`` with a manifest naming the model that made them; per-voxel weights
   (a confidence threshold or confidence weighting, ``weighting``) ride along in a second segmentation channel so
   that nnU-Net's loader and augmentation move them with the labels.
3. ``nnUNetTrainerSelfTraining`` (``nnunet_ssl/trainers/self_training.py``) trains on the labelled cases plus the
   pseudo-labelled ones, served by the semi-supervised base's second nnU-Net loader; more rounds relabel with the
   new model, and an optional last stage fine-tunes on the labelled cases only (Noisy Student).
"""
