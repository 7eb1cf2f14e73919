"""KD-Net's 3D encoder-decoder (Hu et al., MICCAI 2020, paper C, Fig. 1), an nnU-Net-like U-Net.

Paper C names the layers (Conv3d, InstanceNorm3d, LeakyReLU, MaxPool3d, trilinear interpolation, softmax)
and the skip-connection ablation (4 or 0 skips) but no widths; those follow nnU-Net's 3D defaults: five
levels (four 2x max poolings, so the 64^3 input of the paper reaches a 4^3 bottleneck), ``base_features``
doubling per level and capped at 320, each block two 3x3x3 convolutions + InstanceNorm (affine) +
LeakyReLU (slope 0.01). The decoder upsamples trilinearly (x2), concatenates the encoder features of that
level when a skip connection is kept, and applies a block that reduces the channels; a 1x1x1 convolution
gives the logits (the softmax belongs to the loss).

Teacher and student share this architecture; only ``in_channels`` differs (4 MRI modalities vs 1).

Parameters with the defaults (``base_features=32``, ``skips=4``): 16,572,420 for 4 inputs / 4 classes,
16,569,762 for 1 input / 2 classes; ``skips=0``: 14,222,340 (4 in / 4 out). Instance normalisation needs more
than one voxel at the bottleneck, so the smallest input is ``2 * size_divisor`` = 32 per axis.
"""

from __future__ import annotations

import torch

from .layers import ZooModel, conv_type
from .registry import register_model
from .unets import UNetDecoder, UNetEncoder, unet_taps

__all__ = ["KDNet3D", "kdnet3d"]


class KDNet3D(ZooModel):
    """KD-Net encoder-decoder (see module docstring).

    Args:
        in_channels: input channels (modalities).
        num_classes: output channels.
        spatial_dims: 3 (2 gives the same network in 2D).
        base_features: width of the first level.
        max_features: cap on the width.
        levels: number of resolution levels (``levels - 1`` poolings).
        skips: skip connections kept, counted from the highest resolution (paper: 4 or 0).

    Taps: ``encoder`` = ``encoder.blocks.2`` (stride 4), ``bottleneck`` = ``encoder.bottleneck``
    (stride 16; the tensor paper C's KL term compares), ``decoder`` = last decoder block (stride 1), ``logits``.
    """

    model_name = "kdnet3d"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 3,
        base_features: int = 32,
        max_features: int = 320,
        levels: int = 5,
        skips: int = 4,
    ) -> None:
        super().__init__(spatial_dims)
        if base_features < 1 or levels < 2:
            raise ValueError(f"base_features must be >= 1 and levels >= 2, got {base_features} and {levels}")
        widths = tuple(min(base_features * 2**i, max_features) for i in range(levels))
        if not 0 <= skips <= levels - 1:
            raise ValueError(f"skips must be between 0 and {levels - 1}, got {skips}")
        self.widths = widths
        self.skips = skips
        self.size_divisor = 2 ** (levels - 1)
        self.min_size = 2 * self.size_divisor  # InstanceNorm needs > 1 voxel at the bottleneck
        self.encoder = UNetEncoder(spatial_dims, in_channels, widths, 2, "instance", "leakyrelu")
        self.decoder = UNetDecoder(spatial_dims, widths, 2, "instance", "leakyrelu", "interp", skips)
        self.head = conv_type(spatial_dims)(widths[0], num_classes, 1)
        self.feature_taps = unet_taps(widths, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.decoder(self.encoder(x)))


@register_model(
    "kdnet3d",
    role="teacher",
    spatial_dims=(3,),
    description="KD-Net 3D encoder-decoder (nnU-Net-like, InstanceNorm + LeakyReLU, 4 or 0 skips)",
)
def kdnet3d(
    in_channels: int,
    num_classes: int,
    base_features: int = 32,
    max_features: int = 320,
    levels: int = 5,
    skips: int = 4,
) -> KDNet3D:
    """Build :class:`KDNet3D` (3D)."""
    return KDNet3D(in_channels, num_classes, 3, base_features, max_features, levels, skips)
