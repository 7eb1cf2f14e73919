"""ERFNet (Romera, Alvarez, Bergasa, Arroyo, IEEE T-ITS 2018), implemented from the paper's Table 1.

Encoder (output strides in brackets): downsampler to 16 [2]; downsampler to 64 [4]; 5 non-bottleneck-1D
blocks; downsampler to 128 [8]; 8 non-bottleneck-1D blocks with dilations 2, 4, 8, 16, 2, 4, 8, 16.
Decoder: 3x3 stride-2 transposed convolution to 64 [4] + BN + ReLU, 2 non-bottleneck-1D; transposed
convolution to 16 [2] + BN + ReLU, 2 non-bottleneck-1D; a 2x2 stride-2 transposed convolution to the classes.

Downsampler block (after ENet's initial block): a 3x3 stride-2 convolution with ``out - in`` filters
concatenated with a 2x2 max pool of the input, then BN + ReLU. Non-bottleneck-1D: 3x1 conv, ReLU, 1x3 conv,
BN, ReLU, dilated 3x1 conv, ReLU, dilated 1x3 conv, BN, dropout, residual sum, ReLU. Convolutions carry a
bias. Dropout (spatial): 0.03 in the 64-channel encoder blocks, 0.3 in the 128-channel ones, none in the
decoder, as in the paper's training setup.

Parameters: 2,062,872 for 1 input channel and 2 classes (paper A, Table 1: 2,063,130 / 2.06 M).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ZooModel
from .registry import register_model
from .taps import TapSpec

__all__ = ["ERFNet", "erfnet"]


class _Downsampler(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels >= out_channels:
            raise ValueError(f"ERFNet downsampler needs in_channels < {out_channels}, got {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class _NonBottleneck1D(nn.Module):
    def __init__(self, channels: int, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv3x1_1(x))
        y = torch.relu(self.bn1(self.conv1x3_1(y)))
        y = torch.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return torch.relu(y + x)


class _Upsampler(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=True),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.ReLU(),
        )


class ERFNet(ZooModel):
    """ERFNet for 2D segmentation (see module docstring).

    Args:
        in_channels: input channels (fewer than 16).
        num_classes: output channels.
        dropout_64: spatial dropout in the 64-channel encoder blocks.
        dropout_128: spatial dropout in the 128-channel encoder blocks.

    Taps: ``encoder`` = 64-channel stage (stride 4), ``bottleneck`` = end of the encoder (128, stride 8),
    ``decoder`` = last 16-channel block (stride 2), ``logits`` (stride 1).
    """

    model_name = "erfnet"
    size_divisor = 8

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, dropout_64: float = 0.03, dropout_128: float = 0.3
    ) -> None:
        super().__init__(spatial_dims=2)
        self.down1 = _Downsampler(in_channels, 16)
        self.down2 = _Downsampler(16, 64)
        self.stage64 = nn.Sequential(*[_NonBottleneck1D(64, 1, dropout_64) for _ in range(5)])
        self.down3 = _Downsampler(64, 128)
        self.stage128 = nn.Sequential(*[_NonBottleneck1D(128, d, dropout_128) for d in (2, 4, 8, 16) * 2])
        self.up1 = _Upsampler(128, 64)
        self.dec64 = nn.Sequential(_NonBottleneck1D(64), _NonBottleneck1D(64))
        self.up2 = _Upsampler(64, 16)
        self.dec16 = nn.Sequential(_NonBottleneck1D(16), _NonBottleneck1D(16))
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)
        self.feature_taps = {
            "encoder": TapSpec("stage64", 64, 4),
            "bottleneck": TapSpec("stage128", 128, 8),
            "decoder": TapSpec("dec16", 16, 2),
            "logits": TapSpec("", num_classes, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        y = self.stage64(self.down2(self.down1(x)))
        y = self.stage128(self.down3(y))
        y = self.dec64(self.up1(y))
        y = self.dec16(self.up2(y))
        return self.output_conv(y)


@register_model(
    "erfnet", role="student", spatial_dims=(2,), description="ERFNet (Romera 2018): 2.06 M params at 1 in / 2 out"
)
def erfnet(in_channels: int, num_classes: int, dropout_64: float = 0.03, dropout_128: float = 0.3) -> ERFNet:
    """Build :class:`ERFNet`."""
    return ERFNet(in_channels, num_classes, dropout_64, dropout_128)
