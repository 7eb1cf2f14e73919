"""ENet (Paszke, Chaurasia, Kim, Culurciello, 2016, arXiv:1606.02147), implemented from the paper.

Layout (paper Table 1, output strides in brackets): initial block [2]; stage 1: downsampling bottleneck
to 64 channels + 4 regular bottlenecks [4]; stages 2 and 3: downsampling to 128 (stage 2 only), then
regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16 [8]; stage 4:
upsampling bottleneck to 64 + 2 regular [4]; stage 5: upsampling to 16 + 1 regular [2]; a bare
transposed convolution to the classes [1].

Bottleneck: 1x1 projection to ``channels // 4`` (a 2x2 stride-2 convolution when downsampling), the main
convolution (3x3 regular / dilated, 5x1 + 1x5 asymmetric, or 3x3 transposed stride 2 when upsampling),
1x1 expansion, BatchNorm + PReLU between all convolutions, spatial dropout (p = 0.01 up to stage 1,
0.1 afterwards), then the sum with the main branch and a PReLU. The main branch of a downsampling block is
a 2x2 max pool plus zero channel padding; of an upsampling block, a 1x1 convolution and max unpooling with
the indices of the matching pool. The pool keeps, per output pixel, which of its four inputs won (0-3, row-major,
the first on ties, as ``nn.MaxPool2d``) rather than flat indices, and the unpool writes through a one-hot mask and a
pixel shuffle: the same values and gradients as ``max_pool2d`` / ``max_unpool2d``, deterministic on GPUs (no
scatter), and cheaper in onnxruntime, whose MaxPool-with-indices and ScatterElements kernels were a fifth of ENet's
CPU inference time.
An ONNX export gathers the pool's windows with one depthwise one-hot convolution instead of strided slices
(:func:`window_stack_by_conv`, exact in float32), which saves onnxruntime about 4 % at 256 x 256 on 2 CPU cores.

Details the paper leaves open, chosen here: the inner width is ``out_channels // 4`` in every block (the
projection ratio 4); the transposed convolution of an upsampling bottleneck is 2x2 with stride 2; no
convolution carries a bias (the paper drops them from the projections, BatchNorm follows the others);
each PReLU has a single slope.

Parameters: 357,417 for 1 input channel and 2 classes, +1.0 % from the 353,761 of paper A (Table 1, whose
implementation is not published); the ENet paper itself states 0.37 M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ZooModel
from .registry import register_model
from .taps import TapSpec

__all__ = ["ENet", "enet", "max_pool2x_with_winners", "window_stack_by_conv"]


class _InitialBlock(nn.Module):
    """3x3 stride-2 convolution with ``out - in`` filters, concatenated with a 2x2 max pool of the input."""

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        if in_channels >= out_channels:
            raise ValueError(f"ENet initial block needs in_channels < {out_channels}, got {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _cbp(conv: nn.Module, channels: int) -> nn.Sequential:
    """Convolution + BatchNorm + PReLU."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PReLU())


class _Bottleneck(nn.Module):
    """Regular / dilated / asymmetric bottleneck (same channels, same resolution)."""

    def __init__(self, channels: int, kind: str = "regular", dilation: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        mid = channels // 4
        if kind == "asymmetric":
            main: nn.Module = nn.Sequential(
                nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False),
            )
        else:
            main = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.project = _cbp(nn.Conv2d(channels, mid, 1, bias=False), mid)
        self.main = _cbp(main, mid)
        self.expand = nn.Sequential(nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.main(self.project(x)))))


class _DownBottleneck(nn.Module):
    """Downsampling bottleneck; returns the output and the pool's winners (0-3) for the matching unpool."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        mid = out_channels // 4
        self.in_channels = in_channels
        self.extra = out_channels - in_channels
        self.project = _cbp(nn.Conv2d(in_channels, mid, 2, stride=2, bias=False), mid)
        self.main = _cbp(nn.Conv2d(mid, mid, 3, padding=1, bias=False), mid)
        self.expand = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, winners = max_pool2x_with_winners(x, self.in_channels)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))  # zero-pad channels
        ext = self.dropout(self.expand(self.main(self.project(x))))
        return self.act(main + ext), winners


def max_pool2x_with_winners(x: torch.Tensor, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 stride-2 max pooling that also returns which input of each window won.

    Returns ``(pooled, winners)``: ``pooled`` equals ``F.max_pool2d(x, 2)`` (values and gradients) and
    ``winners`` holds 0-3, the row-major position of the maximum inside its 2x2 window (the first one on ties,
    like ``F.max_pool2d(..., return_indices=True)``). Odd trailing rows / columns are dropped, as there.
    ``channels`` (``x``'s channel count) lets an ONNX export gather the windows with :func:`window_stack_by_conv`.
    """
    if channels is not None and torch.onnx.is_in_onnx_export():
        windows = window_stack_by_conv(x, channels)
    else:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        windows = torch.stack([x[:, :, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)], dim=2)
    return windows.max(dim=2)


def window_stack_by_conv(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The four inputs of every 2x2 stride-2 window, ``(B, C, 4, H // 2, W // 2)`` in row-major order.

    A depthwise 2x2 stride-2 convolution with one-hot kernels: exact in float32 (each output is one input times 1
    plus zeros; -0 becomes +0), and one Conv node in ONNX where four strided slices cost onnxruntime 12 Slice /
    Unsqueeze / Concat nodes, 1.6 ms of ENet's 12 ms at 256 x 256 on 2 CPU cores. Used for export only: GPUs may
    run convolutions in TF32, which would round the values.
    """
    kernel = torch.eye(4, dtype=x.dtype, device=x.device).reshape(4, 1, 2, 2).repeat(channels, 1, 1, 1)
    return F.conv2d(x, kernel, stride=2, groups=channels).unflatten(1, (channels, 4))


class _MaxUnpool2x(nn.Module):
    """2x2 max unpooling from :func:`max_pool2x_with_winners`' winners (equal to ``F.max_unpool2d(x, idx, 2)``).

    Each value goes to its winning position through a one-hot mask, then ``pixel_shuffle`` interleaves the four
    positions: no scatter, so it is deterministic on GPUs and exports to ONNX as Equal / Mul / DepthToSpace.
    """

    def forward(self, x: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        positions = torch.arange(4, device=x.device).view(1, 1, 4, 1, 1)
        spread = x.unsqueeze(2) * (winners.unsqueeze(2) == positions).to(x.dtype)
        return F.pixel_shuffle(spread.reshape(b, c * 4, h, w), 2)


class _UpBottleneck(nn.Module):
    """Upsampling bottleneck: 1x1 conv + max unpooling on the main branch, transposed conv in the extension."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        mid = out_channels // 4
        self.main_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.unpool = _MaxUnpool2x()
        self.project = _cbp(nn.Conv2d(in_channels, mid, 1, bias=False), mid)
        self.main = _cbp(nn.ConvTranspose2d(mid, mid, 2, stride=2, bias=False), mid)
        self.expand = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor, winners: torch.Tensor) -> torch.Tensor:
        main = self.unpool(self.main_conv(x), winners)
        ext = self.dropout(self.expand(self.main(self.project(x))))
        return self.act(main + ext)


def _stage23(dropout: float) -> list[nn.Module]:
    """The eight 128-channel bottlenecks shared by stages 2 and 3."""
    kinds = (
        ("regular", 1),
        ("dilated", 2),
        ("asymmetric", 1),
        ("dilated", 4),
        ("regular", 1),
        ("dilated", 8),
        ("asymmetric", 1),
        ("dilated", 16),
    )
    return [_Bottleneck(128, kind, d, dropout) for kind, d in kinds]


class ENet(ZooModel):
    """ENet for 2D segmentation (see module docstring).

    Args:
        in_channels: input channels (fewer than 16).
        num_classes: output channels.
        dropout_early: spatial dropout of the initial stage-1 blocks (paper: 0.01).
        dropout: spatial dropout of the later blocks (paper: 0.1).

    Taps: ``encoder`` = stage 1 output (64 ch, stride 4), ``bottleneck`` = stage 3 output (128 ch, stride 8),
    ``decoder`` = stage 5 output (16 ch, stride 2), ``logits`` (stride 1).
    """

    model_name = "enet"
    size_divisor = 8

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, dropout_early: float = 0.01, dropout: float = 0.1
    ) -> None:
        super().__init__(spatial_dims=2)
        self.initial = _InitialBlock(in_channels, 16)
        self.down1 = _DownBottleneck(16, 64, dropout_early)
        self.stage1 = nn.Sequential(*[_Bottleneck(64, "regular", 1, dropout_early) for _ in range(4)])
        self.down2 = _DownBottleneck(64, 128, dropout)
        self.stage2 = nn.Sequential(*_stage23(dropout))
        self.stage3 = nn.Sequential(*_stage23(dropout))
        self.up4 = _UpBottleneck(128, 64, dropout)
        self.stage4 = nn.Sequential(*[_Bottleneck(64, "regular", 1, dropout) for _ in range(2)])
        self.up5 = _UpBottleneck(64, 16, dropout)
        self.stage5 = nn.Sequential(_Bottleneck(16, "regular", 1, dropout))
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.feature_taps = {
            "encoder": TapSpec("stage1", 64, 4),
            "bottleneck": TapSpec("stage3", 128, 8),
            "decoder": TapSpec("stage5", 16, 2),
            "logits": TapSpec("", num_classes, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x0 = self.initial(x)
        x1, win1 = self.down1(x0)
        x1 = self.stage1(x1)
        x2, win2 = self.down2(x1)
        x2 = self.stage3(self.stage2(x2))
        y = self.stage4(self.up4(x2, win2))
        y = self.stage5(self.up5(y, win1))
        return self.fullconv(y)


@register_model(
    "enet",
    role="student",
    spatial_dims=(2,),
    description="ENet (Paszke 2016): 0.357 M params at 1 in / 2 out (paper A: 0.353 M)",
)
def enet(in_channels: int, num_classes: int, dropout_early: float = 0.01, dropout: float = 0.1) -> ENet:
    """Build :class:`ENet`."""
    return ENet(in_channels, num_classes, dropout_early, dropout)
