"""Decoder feature taps on nnU-Net's U-Nets (dynamic_network_architectures ``UNetDecoder``).

``decoder.stages`` is ordered from low to high resolution, so stage -1 gives the full-resolution features just
before the segmentation head, -2 the next coarser ones, and so on. Forward hooks are used (they fire under
``torch.compile`` and DDP as well) so the network's forward and output type stay nnU-Net's.
"""
import copy
from typing import Dict, Sequence, Union

import torch
from torch import nn

from nnunet_ssl.modules.ema import unwrap_network


def decoder_stage_channels(network: nn.Module, stage: int) -> int:
    """Number of output channels of ``decoder.stages[stage]``."""
    seg_layers = unwrap_network(network).decoder.seg_layers
    return seg_layers[stage].in_channels


def bottleneck_channels(network: nn.Module) -> int:
    """Number of output channels of the encoder's last (coarsest) stage, the decoder's input."""
    return unwrap_network(network).encoder.output_channels[-1]


class DecoderFeatureTap:
    """Collect the outputs of chosen decoder stages on every forward: ``tap.features[stage]``; with
    ``bottleneck=True`` also the encoder's last stage output: ``tap.features["bottleneck"]``.

    Use one tap per network; features of the last forward overwrite earlier ones. ``remove()`` detaches hooks.
    """

    def __init__(self, network: nn.Module, stages: Sequence[int], bottleneck: bool = False):
        unet = unwrap_network(network)
        decoder = unet.decoder
        n = len(decoder.stages)
        self.stages = tuple(stages)
        for s in self.stages:
            if not -n <= s < n:
                raise ValueError(f"decoder stage {s} does not exist; this network has {n} decoder stages "
                                 f"(valid: {-n}..{n - 1})")
        self.features: Dict[Union[int, str], torch.Tensor] = {}
        self._handles = [decoder.stages[s].register_forward_hook(self._hook(s)) for s in self.stages]
        if bottleneck:
            self._handles.append(unet.encoder.stages[-1].register_forward_hook(self._hook("bottleneck")))

    def _hook(self, stage):
        def hook(module, inputs, output):
            self.features[stage] = output
        return hook

    def __deepcopy__(self, memo):
        """A deep copy of a tapped network carries its hooks, not the features of the last forward (tensors of a
        graph cannot be deep-copied); ``EMATeacher`` replaces the copy's hooks (``CRLNNet.attach_feature_tap``)."""
        copied = copy.copy(self)
        copied.features = {}
        return copied

    def pop(self) -> Dict[Union[int, str], torch.Tensor]:
        """The features of the last forward; clears them so stale tensors are not kept alive."""
        out, self.features = self.features, {}
        return out

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []
