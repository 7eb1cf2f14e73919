"""U-Net family: a configurable 2D / 3D U-Net and the zoo entries built from it.

* ``unet_s1`` — thesis B's student S1 "U-Net-S" (section 3.3): two encoder blocks (16, 32 channels), a
  64-channel bottleneck and two decoder blocks, each block one 3x3 convolution + BatchNorm + ReLU; 2x2 max
  pooling; 2x2 stride-2 transposed convolutions; skip connections by concatenation; a 1x1 classifier.
  57,297 parameters for 3 inputs and 1 output, exactly the thesis' count (Table 4.2: 0.057 M).
* ``unet_s2`` — thesis B's S2 "U-Net": the same layout at twice the width (32, 64, 128): 227,233
  parameters for 3 inputs and 1 output (thesis: 0.227 M).
* ``unet`` — a plain 2D U-Net teacher (Ronneberger et al. 2015, with BatchNorm): widths 64..1024, two 3x3
  convolutions + BatchNorm + ReLU per block, max pooling, transposed-convolution upsampling, concatenated skips:
  thesis B's teacher T1 without its reconstruction decoder (31.0 M at 1 in / 4 out); ``widths`` slims it.
* ``unet3d_small`` — a small 3D U-Net student: widths 16, 32, 64, 128, two 3x3x3 convolutions +
  InstanceNorm + LeakyReLU per block, transposed-convolution upsampling (1,401,986 parameters at 1 in / 2 out).
* ``unetplusplus`` — UNet++ (Zhou et al. 2018) as MONAI's ``BasicUNetPlusPlus`` with features
  (64, 128, 256, 512, 1024, 128), BatchNorm + ReLU: 36,782,920 parameters at 1 in / 2 out (paper A: 36.6 M).

The building blocks (:class:`UNetEncoder`, :class:`UNetDecoder`) are shared with the multi-task teacher
and KD-Net's 3D network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    ZooModel,
    batch_norm_type,
    conv_transpose_type,
    conv_type,
    instance_norm_type,
    interp_mode,
    max_pool_type,
)
from .registry import register_model
from .taps import TapSpec

__all__ = [
    "ConvBlock",
    "UNetEncoder",
    "UNetDecoder",
    "UNet",
    "UNetPlusPlus",
    "unet_s1",
    "unet_s2",
    "unet3d_small",
    "unetplusplus",
]


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return batch_norm_type(dims)(channels)
    if kind == "instance":
        return instance_norm_type(dims)(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {kind!r}")


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01)
    raise ValueError(f"act must be 'relu' or 'leakyrelu', got {kind!r}")


class ConvBlock(nn.Sequential):
    """``n`` times (3x3 convolution, norm, activation); the first convolution maps ``in -> out`` channels.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        n: number of convolutions.
        norm: ``"batch"``, ``"instance"`` (affine) or ``"none"``.
        act: ``"relu"`` or ``"leakyrelu"`` (slope 0.01).
        dropout: channel dropout after the block (0 = none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n: int = 2,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        conv = conv_type(spatial_dims)
        for i in range(n):
            layers += [
                conv(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=True),
                _norm(norm, spatial_dims, out_channels),
                _act(act),
            ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UNetEncoder(nn.Module):
    """Encoder blocks separated by 2x max pooling, then the bottleneck block.

    ``blocks[i]`` runs at stride ``2**i``; ``bottleneck`` at stride ``2**len(blocks)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: Sequence[int],
        convs: int = 2,
        norm: str = "batch",
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least 2 widths (one encoder level + bottleneck), got {widths}")
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ConvBlock(spatial_dims, chans[i], chans[i + 1], convs, norm, act) for i in range(len(widths) - 1)
        )
        self.pool = max_pool_type(spatial_dims)(2)
        self.bottleneck = ConvBlock(spatial_dims, widths[-2], widths[-1], convs, norm, act)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the skip features (highest resolution first) followed by the bottleneck."""
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        feats.append(self.bottleneck(self.pool(x)))
        return feats


class UNetDecoder(nn.Module):
    """Upsampling path: ``ups[i]`` then (optional) concatenation with the skip, then ``blocks[i]``.

    ``blocks`` run from the deepest level upwards; the last one is at full resolution.

    Args:
        spatial_dims: 2 or 3.
        widths: encoder widths, bottleneck last (as for :class:`UNetEncoder`).
        convs: convolutions per block.
        norm: see :class:`ConvBlock`.
        act: see :class:`ConvBlock`.
        upsample: ``"transpose"`` (2x2 stride-2 transposed convolution to the skip's width) or
            ``"interp"`` (parameter-free (bi/tri)linear x2; the block then reduces the channels).
        skips: how many of the highest-resolution levels keep their skip connection (default: all).
    """

    def __init__(
        self,
        spatial_dims: int,
        widths: Sequence[int],
        convs: int = 2,
        norm: str = "batch",
        act: str = "relu",
        upsample: str = "transpose",
        skips: int | None = None,
    ) -> None:
        super().__init__()
        levels = len(widths) - 1
        self.skips = levels if skips is None else int(skips)
        if not 0 <= self.skips <= levels:
            raise ValueError(f"skips must be between 0 and {levels}, got {skips}")
        if upsample not in ("transpose", "interp"):
            raise ValueError(f"upsample must be 'transpose' or 'interp', got {upsample!r}")
        self.mode = interp_mode(spatial_dims)
        self.upsample = upsample
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        deeper = widths[-1]
        for lvl in reversed(range(levels)):  # lvl = index of the skip feature this block merges
            w = widths[lvl]
            if upsample == "transpose":
                self.ups.append(conv_transpose_type(spatial_dims)(deeper, w, 2, stride=2))
                up_ch = w
            else:
                self.ups.append(nn.Identity())
                up_ch = deeper
            in_ch = up_ch + (w if self.uses_skip(lvl) else 0)
            self.blocks.append(ConvBlock(spatial_dims, in_ch, w, convs, norm, act))
            deeper = w

    def uses_skip(self, level: int) -> bool:
        """Whether skip level ``level`` (0 = highest resolution) is concatenated."""
        return level < self.skips

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode ``[skip_0, ..., skip_{L-1}, bottleneck]`` into the full-resolution features."""
        x = feats[-1]
        levels = len(feats) - 1
        for i, (up, block) in enumerate(zip(self.ups, self.blocks, strict=True)):
            lvl = levels - 1 - i
            skip = feats[lvl]
            if self.upsample == "interp":
                x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
            else:
                x = up(x)
            if self.uses_skip(lvl):
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        return x


class UNet(ZooModel):
    """Configurable U-Net (2D or 3D).

    Args:
        in_channels: input channels.
        num_classes: output channels.
        spatial_dims: 2 or 3.
        widths: channels per level, bottleneck last, e.g. ``(16, 32, 64)``.
        convs: convolutions per block.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        act: ``"relu"`` or ``"leakyrelu"``.
        upsample: ``"transpose"`` or ``"interp"``.
        skips: number of skip connections kept (highest-resolution levels first); ``None`` = all.
        name: model name used in messages.

    Taps: ``encoder`` = ``encoder.blocks[len // 2]``, ``bottleneck`` = ``encoder.bottleneck``,
    ``decoder`` = the last decoder block (full resolution), ``logits`` = the 1x1 head's output.
    The input spatial size must be divisible by ``2 ** (len(widths) - 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        widths: Sequence[int] = (16, 32, 64),
        convs: int = 2,
        norm: str = "batch",
        act: str = "relu",
        upsample: str = "transpose",
        skips: int | None = None,
        name: str = "unet",
    ) -> None:
        super().__init__(spatial_dims)
        widths = tuple(int(w) for w in widths)
        self.model_name = name
        self.size_divisor = 2 ** (len(widths) - 1)
        if norm == "instance":  # InstanceNorm needs more than one voxel at the bottleneck
            self.min_size = 2 * self.size_divisor
        self.encoder = UNetEncoder(spatial_dims, in_channels, widths, convs, norm, act)
        self.decoder = UNetDecoder(spatial_dims, widths, convs, norm, act, upsample, skips)
        self.head = conv_type(spatial_dims)(widths[0], num_classes, 1)
        self.feature_taps = unet_taps(widths, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.decoder(self.encoder(x)))


def unet_taps(widths: Sequence[int], num_classes: int, decoder: str = "decoder") -> dict[str, TapSpec]:
    """Standard taps of a network made of :class:`UNetEncoder` ``encoder`` + :class:`UNetDecoder` ``decoder``."""
    n_enc = len(widths) - 1
    mid = n_enc // 2
    return {
        "encoder": TapSpec(f"encoder.blocks.{mid}", widths[mid], 2**mid),
        "bottleneck": TapSpec("encoder.bottleneck", widths[-1], 2**n_enc),
        "decoder": TapSpec(f"{decoder}.blocks.{n_enc - 1}", widths[0], 1),
        "logits": TapSpec("", num_classes, 1),
    }


@register_model(
    "unet_s1",
    role="student",
    spatial_dims=(2,),
    description="thesis S1 'U-Net-S': widths 16/32/64, one conv per block (57,297 params at 3 in / 1 out)",
)
def unet_s1(in_channels: int, num_classes: int) -> UNet:
    """Thesis B's student S1 (see module docstring)."""
    return UNet(in_channels, num_classes, 2, (16, 32, 64), convs=1, norm="batch", act="relu", name="unet_s1")


@register_model(
    "unet_s2",
    role="student",
    spatial_dims=(2,),
    description="thesis S2 'U-Net': widths 32/64/128, one conv per block (0.227 M at 3 in / 1 out)",
)
def unet_s2(in_channels: int, num_classes: int) -> UNet:
    """Thesis B's student S2 (see module docstring)."""
    return UNet(in_channels, num_classes, 2, (32, 64, 128), convs=1, norm="batch", act="relu", name="unet_s2")


@register_model(
    "unet",
    role="teacher",
    spatial_dims=(2,),
    description="plain 2D U-Net: widths 64..1024, 2 convs + BatchNorm + ReLU per block (T1 without reconstruction)",
)
def unet(in_channels: int, num_classes: int, widths: Sequence[int] = (64, 128, 256, 512, 1024)) -> UNet:
    """A plain 2D U-Net teacher (see module docstring)."""
    return UNet(in_channels, num_classes, 2, widths, convs=2, norm="batch", act="relu", name="unet")


@register_model(
    "unet3d_small",
    role="student",
    spatial_dims=(3,),
    description="small 3D U-Net: widths 16/32/64/128, 2 convs + InstanceNorm + LeakyReLU per block",
)
def unet3d_small(in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64, 128)) -> UNet:
    """A small 3D U-Net student (see module docstring)."""
    return UNet(in_channels, num_classes, 3, widths, convs=2, norm="instance", act="leakyrelu", name="unet3d_small")


class UNetPlusPlus(ZooModel):
    """UNet++ (nested U-Net) built on MONAI's ``BasicUNetPlusPlus``.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        features: MONAI's six feature sizes (five levels + the top upsampling width).
        deep_supervision: if True, ``forward`` returns MONAI's list of the four full-resolution heads
            (shallowest first; :func:`medkd.models.normalize_output` then takes the last, deepest one).
        dropout: dropout inside the blocks.

    Taps: ``encoder`` = ``net.conv_2_0`` (stride 4), ``bottleneck`` = ``net.conv_4_0`` (stride 16),
    ``decoder`` = ``net.upcat_0_4`` (the final nested node x_0_4), ``logits``.
    """

    model_name = "unetplusplus"
    size_divisor = 16
    output_select = "last"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (64, 128, 256, 512, 1024, 128),
        deep_supervision: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims=2)
        from monai.networks.nets import BasicUNetPlusPlus  # lazy: keeps `import medkd.models` free of monai

        features = tuple(int(f) for f in features)
        if len(features) != 6:
            raise ValueError(f"features must have 6 entries (5 levels + top upsampling width), got {features}")
        self.deep_supervision = deep_supervision
        self.net = BasicUNetPlusPlus(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            features=features,
            deep_supervision=deep_supervision,
            act=("relu", {"inplace": False}),
            norm=("batch", {"affine": True}),
            dropout=dropout,
            upsample="deconv",
        )
        self.feature_taps = {
            "encoder": TapSpec("net.conv_2_0", features[2], 4),
            "bottleneck": TapSpec("net.conv_4_0", features[4], 16),
            "decoder": TapSpec("net.upcat_0_4", features[5], 1),
            "logits": TapSpec("", num_classes, 1),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        out = self.net(x)
        return list(out) if self.deep_supervision else out[-1]


@register_model(
    "unetplusplus",
    role="teacher",
    spatial_dims=(2,),
    description="UNet++ (MONAI BasicUNetPlusPlus, features 64..1024): 36.8 M params at 1 in / 2 out",
)
def unetplusplus(
    in_channels: int,
    num_classes: int,
    features: Sequence[int] = (64, 128, 256, 512, 1024, 128),
    deep_supervision: bool = False,
    dropout: float = 0.0,
) -> UNetPlusPlus:
    """Build :class:`UNetPlusPlus`."""
    return UNetPlusPlus(in_channels, num_classes, features, deep_supervision, dropout)
