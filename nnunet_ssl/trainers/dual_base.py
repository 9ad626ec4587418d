"""``nnUNetTrainerDualSSL``: base of dual-student methods (CDR, UGPL).

Two networks built from the dataset's plans (by default one with the planned architecture and one with the
other U-Net family of dynamic_network_architectures, for different inductive biases), each with its own SGD and
poly schedule, trained in one ``train_step``; the exported network is ``DualNetwork``, which averages their
probabilities, so stock ``nnUNetv2_predict`` ensembles them.
"""
from typing import List

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ssl.modules.dual import DualNetwork
from nnunet_ssl.trainers.base import nnUNetTrainerSSL

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


# nnU-Net's ResEnc presets (ResNet34-like): residual blocks per encoder stage, the last value repeated
RESNET34_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6)


def other_unet_family(arch_class_name: str, arch_kwargs: dict, resenc_blocks_per_stage=RESNET34_BLOCKS_PER_STAGE,
                      plain_convs_per_stage: int = 2):
    """(class name, kwargs) of the other U-Net family with the same stages, features, kernels and strides.

    PlainConvUNet plans give a ResidualEncoderUNet with ``resenc_blocks_per_stage``; ResidualEncoderUNet plans a
    PlainConvUNet with ``plain_convs_per_stage`` convolutions per stage. Other architectures: None."""
    kwargs = dict(arch_kwargs)
    n_stages = kwargs["n_stages"]
    if arch_class_name == PLAIN:
        kwargs.pop("n_conv_per_stage")
        blocks = tuple(resenc_blocks_per_stage)
        kwargs["n_blocks_per_stage"] = (blocks + blocks[-1:] * n_stages)[:n_stages]
        return RESENC, kwargs
    if arch_class_name == RESENC:
        kwargs.pop("n_blocks_per_stage")
        kwargs["n_conv_per_stage"] = (plain_convs_per_stage,) * n_stages
        for k in ("block", "bottleneck_channels", "stem_channels"):
            kwargs.pop(k, None)
        return PLAIN, kwargs
    return None


class nnUNetTrainerDualSSL(nnUNetTrainerSSL):
    num_teachers_needed = 0          # two students, no EMA teacher
    # both networks see one input, so there is no weak/strong split: the unlabelled batch keeps nnU-Net's full
    # training augmentation, as the labelled one does
    unlabeled_view = "nnunet"
    use_strong_view = False
    export_weights = "student"       # the DualNetwork ensemble
    second_network = "other_family"  # 'other_family' (plain <-> residual encoder) or 'same' (other random init)
    resenc_blocks_per_stage = RESNET34_BLOCKS_PER_STAGE  # residual blocks per stage when B is the ResEnc U-Net

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        arch = configuration_manager.network_arch_class_name
        kwargs = configuration_manager.network_arch_init_kwargs
        req_import = configuration_manager.network_arch_init_kwargs_req_import
        net_a = get_network_from_plans(arch, kwargs, req_import, num_input_channels, num_output_channels,
                                       allow_init=True, deep_supervision=enable_deep_supervision)
        if cls.second_network not in ("same", "other_family"):
            raise ValueError(f"{cls.__name__}.second_network must be 'same' or 'other_family', "
                             f"got {cls.second_network!r}")
        other = other_unet_family(arch, kwargs, cls.resenc_blocks_per_stage) \
            if cls.second_network == "other_family" else None
        if cls.second_network == "other_family" and other is None:
            print(f"{cls.__name__}: plans architecture {arch} is neither PlainConvUNet nor ResidualEncoderUNet; "
                  f"the second network is an independently initialised copy (second_network='same').")
        arch_b, kwargs_b = other or (arch, kwargs)
        net_b = get_network_from_plans(arch_b, kwargs_b, req_import, num_input_channels, num_output_channels,
                                       allow_init=True, deep_supervision=enable_deep_supervision)
        return DualNetwork(net_a, net_b)

    def set_deep_supervision_enabled(self, enabled: bool):
        self.student.set_deep_supervision(enabled)

    def configure_optimizers(self):
        """SGD + poly LR for network A (nnU-Net's settings); network B gets its own in configure_extra_optimizers."""
        return self.sgd_with_poly(self.student.net_a.parameters())

    def configure_extra_optimizers(self):
        return {"net_b": self.sgd_with_poly(self.student.net_b.parameters())}

    def optimizers_for_main_loss(self) -> List[torch.optim.Optimizer]:
        return [self.optimizer, self.extra_optimizers["net_b"]]

    # the sub-networks are called directly (the DDP/compile wrapper around DualNetwork only serves validation),
    # so they are compiled on their own when nnU-Net compiles
    def forward_a(self, x):
        return self.maybe_compiled("net_a", self.student.net_a)(x)

    def forward_b(self, x):
        return self.maybe_compiled("net_b", self.student.net_b)(x)

    def parameters_outside_ddp(self):
        # the sub-networks bypass DDP's forward, so DDP never averages their gradients
        return list(self.student.parameters()) + list(self.extra_modules.parameters())
