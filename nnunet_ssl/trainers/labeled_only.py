"""Labelled-only nnU-Net (stock ``nnUNetTrainer``) on the short schedule of the demo, so that ``scripts/demo.sh``
compares it with a semi-supervised ``*_demo`` variant at the same number of iterations."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.trainers.base import apply_schedule
from nnunet_ssl.trainers.tiny import DEMO_SCHEDULE


class nnUNetTrainer_demo(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self, DEMO_SCHEDULE)
