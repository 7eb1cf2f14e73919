"""Thesis B's multi-task teacher T1: one shared U-Net encoder, a segmentation and a reconstruction decoder.

Encoder: the classic U-Net (Ronneberger 2015) with BatchNorm: blocks of two 3x3 convolutions + BN + ReLU at
64, 128, 256, 512 channels and a 1024-channel bottleneck, 2x2 max pooling. Each decoder: 2x2 stride-2
transposed convolutions, concatenation with the encoder skips, two 3x3 conv + BN + ReLU per level. The
segmentation head is a 1x1 convolution to ``num_classes``; the reconstruction head a 1x1 convolution back to
``in_channels`` (the image itself is the target; thesis loss ``L_seg + 0.2 * MSE(reconstruction, x)``).

``forward`` returns the segmentation logits only, so the teacher drops into any segmentation code; the
reconstruction is the ``reconstruction`` tap, or both come from :meth:`MultiTaskUNet.forward_multitask`.

Parameters: 43,234,819 at 1 input channel / 2 classes (thesis Table 4.1: 43.23 M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layers import ZooModel, conv_type
from .registry import register_model
from .taps import TapSpec
from .unets import UNetDecoder, UNetEncoder, unet_taps

__all__ = ["MultiTaskUNet", "multitask_unet"]


class MultiTaskUNet(ZooModel):
    """Shared-encoder U-Net with segmentation and reconstruction decoders (see module docstring).

    Args:
        in_channels: input channels (also the reconstruction's channels).
        num_classes: segmentation output channels.
        spatial_dims: 2 or 3.
        widths: encoder widths, bottleneck last.

    Taps: ``encoder`` = ``encoder.blocks.2`` (256 ch, stride 4), ``bottleneck`` = ``encoder.bottleneck``
    (1024, stride 16), ``decoder`` = last block of the segmentation decoder (64, stride 1), ``logits``,
    ``reconstruction`` = ``rec_head`` (``in_channels``, stride 1).
    """

    model_name = "multitask_unet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
    ) -> None:
        super().__init__(spatial_dims)
        widths = tuple(int(w) for w in widths)
        self.size_divisor = 2 ** (len(widths) - 1)
        conv = conv_type(spatial_dims)
        self.encoder = UNetEncoder(spatial_dims, in_channels, widths, 2, "batch", "relu")
        self.decoder = UNetDecoder(spatial_dims, widths, 2, "batch", "relu", "transpose")
        self.head = conv(widths[0], num_classes, 1)
        self.rec_decoder = UNetDecoder(spatial_dims, widths, 2, "batch", "relu", "transpose")
        self.rec_head = conv(widths[0], in_channels, 1)
        self.feature_taps = unet_taps(widths, num_classes)
        self.feature_taps["reconstruction"] = TapSpec("rec_head", in_channels, 1)

    def forward_multitask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(segmentation_logits, reconstruction)``."""
        self.check_input(x)
        feats = self.encoder(x)
        return self.head(self.decoder(feats)), self.rec_head(self.rec_decoder(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_multitask(x)[0]


@register_model(
    "multitask_unet",
    role="teacher",
    spatial_dims=(2,),
    description="thesis T1: U-Net encoder 64..1024 + segmentation & reconstruction decoders (43.2 M)",
)
def multitask_unet(
    in_channels: int, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512, 1024)
) -> MultiTaskUNet:
    """Build the 2D :class:`MultiTaskUNet`."""
    return MultiTaskUNet(in_channels, num_classes, 2, widths)
