"""ESPNet v1 (Mehta, Rastegari, Caspi, Shapiro, Hajishirzi, ECCV 2018), the full network with its decoder.

Implemented from the paper (section 3 and Fig. 4d), with ``p = 2`` and ``q = 3`` ESP modules at levels 2 and 3
(``alpha_2``, ``alpha_3``).

ESP module (N channels, K = 5 branches): a 1x1 convolution reduces to ``d = N // K`` channels (the first
branch takes the remainder ``N - (K - 1) d``), K parallel 3x3 convolutions with dilation 1, 2, 4, 8, 16,
hierarchical feature fusion (each branch's output is added to the running sum of the previous ones before
concatenation), a residual connection when input and output shapes agree, then BatchNorm + PReLU. The
strided variant replaces the 1x1 reduction with a 3x3 stride-2 convolution and drops the residual.

Encoder (output strides in brackets): 3x3 stride-2 CBR to 16 [2], concatenated with the input average-pooled
to that size ("input reinforcement"); strided ESP to 64 [4], p ESP modules, concatenation of the strided
output, the last module's output and the input pooled to 1/4; strided ESP to 128 [8], q ESP modules,
concatenation of the strided and last outputs (256 channels). Every concatenation is followed by BN + PReLU.

Decoder: 1x1 convolution 256 -> C [8], 2x2 transposed convolution to [4]; concatenation with a 1x1 projection
of the level-2 features to C channels; an ESP module 2C -> C (no residual); 2x2 transposed convolution to
[2] + BN + PReLU; concatenation with the level-1 features; 3x3 CBR to C; 2x2 transposed convolution to [1].
Convolutions carry no bias (BN follows); PReLU has one slope per channel.

Parameters: 182,655 for 1 input channel and 2 classes, -0.6 % from paper A's 183,725 (Table 1: 0.183 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ZooModel
from .registry import register_model
from .taps import TapSpec

__all__ = ["ESPNet", "ESPModule", "espnet"]


class _BR(nn.Sequential):
    """BatchNorm + PReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.PReLU(channels))


class _CBR(nn.Sequential):
    """Convolution (no bias) + BatchNorm + PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )


class ESPModule(nn.Module):
    """Efficient spatial pyramid of dilated convolutions (reduce, split, transform, merge).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1, or 2 for the strided (downsampling) variant.
        residual: add the input to the output (only possible when shapes agree).
        branches: K, the number of dilated branches (dilations 1, 2, 4, ..., 2^(K-1)); reduced to
            ``out_channels`` when there are fewer channels than branches (e.g. the decoder's ESP module for
            2 classes), so that no branch is empty.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True, branches: int = 5
    ) -> None:
        super().__init__()
        branches = max(1, min(branches, out_channels))  # a 2-channel module cannot feed 5 branches
        d = out_channels // branches
        first = out_channels - (branches - 1) * d
        k = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, d, k, stride=stride, padding=k // 2, bias=False)
        widths = [first] + [d] * (branches - 1)
        self.branches = nn.ModuleList(
            nn.Conv2d(d, w, 3, padding=2**i, dilation=2**i, bias=False) for i, w in enumerate(widths)
        )
        self.residual = residual and stride == 1 and in_channels == out_channels
        self.br = _BR(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        outs = [b(r) for b in self.branches]
        fused = [outs[0], outs[1]]  # hierarchical feature fusion: running sums from branch 2 on
        acc = outs[1]
        for o in outs[2:]:
            acc = acc + o
            fused.append(acc)
        y = torch.cat(fused, dim=1)
        if self.residual:
            y = y + x
        return self.br(y)


class ESPNet(ZooModel):
    """The full ESPNet (encoder ESPNet-C plus the light decoder), see module docstring.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        p: ESP modules at level 2.
        q: ESP modules at level 3.

    Taps: ``encoder`` = level-2 concatenation (64 + 64 + in channels, stride 4), ``bottleneck`` = level-3
    concatenation (256, stride 8), ``decoder`` = 3x3 CBR before the last upsampling (C channels, stride 2),
    ``logits`` (stride 1).
    """

    model_name = "espnet"
    size_divisor = 8

    def __init__(self, in_channels: int = 1, num_classes: int = 2, p: int = 2, q: int = 3) -> None:
        super().__init__(spatial_dims=2)
        c = num_classes
        l1 = 16 + in_channels
        l2 = 64 + 64 + in_channels
        self.level1 = _CBR(in_channels, 16, 3, stride=2)
        self.br1 = _BR(l1)
        self.down2 = ESPModule(l1, 64, stride=2)
        self.level2 = nn.Sequential(*[ESPModule(64, 64) for _ in range(p)])
        self.br2 = _BR(l2)
        self.down3 = ESPModule(l2, 128, stride=2)
        self.level3 = nn.Sequential(*[ESPModule(128, 128) for _ in range(q)])
        self.br3 = _BR(256)
        # decoder
        self.classifier3 = nn.Conv2d(256, c, 1, bias=False)
        self.up3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.project2 = nn.Conv2d(l2, c, 1, bias=False)
        self.br_merge2 = _BR(2 * c)
        self.merge2 = ESPModule(2 * c, c, residual=False)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), _BR(c))
        self.merge1 = _CBR(l1 + c, c, 3)
        self.up1 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.feature_taps = {
            "encoder": TapSpec("br2", l2, 4),
            "bottleneck": TapSpec("br3", 256, 8),
            "decoder": TapSpec("merge1", c, 2),
            "logits": TapSpec("", c, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x2 = F.avg_pool2d(x, 2)
        x4 = F.avg_pool2d(x2, 2)
        f1 = self.br1(torch.cat([self.level1(x), x2], 1))
        d2 = self.down2(f1)
        f2 = self.br2(torch.cat([d2, self.level2(d2), x4], 1))
        d3 = self.down3(f2)
        f3 = self.br3(torch.cat([d3, self.level3(d3)], 1))
        y = self.up3(self.classifier3(f3))
        y = self.merge2(self.br_merge2(torch.cat([y, self.project2(f2)], 1)))
        y = self.up2(y)
        y = self.merge1(torch.cat([y, f1], 1))
        return self.up1(y)


@register_model(
    "espnet",
    role="student",
    spatial_dims=(2,),
    description="ESPNet v1 with decoder, p=2 q=3 (Mehta 2018): 0.183 M params at 1 in / 2 out",
)
def espnet(in_channels: int, num_classes: int, p: int = 2, q: int = 3) -> ESPNet:
    """Build :class:`ESPNet`."""
    return ESPNet(in_channels, num_classes, p, q)
