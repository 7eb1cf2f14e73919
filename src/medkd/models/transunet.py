"""Thesis B's multi-task teacher T2: a TransUNet-style encoder (CNN + ViT) with segmentation and
reconstruction decoders.

After TransUNet (Chen et al. 2021): a convolutional encoder (two 3x3 conv + BN + ReLU per level, widths
64, 128, 256, 512 at strides 1, 2, 4, 8) gives the skips; a 2x2 stride-2 patch embedding of the stride-8
features to ``hidden_size`` tokens (stride 16) with a learned position embedding, ``num_layers`` pre-norm ViT
blocks (LayerNorm, multi-head self-attention, LayerNorm, GELU MLP, residuals; ViT-B/16 sizes by default:
hidden 768, MLP 3072, 12 heads, 12 layers) and a final LayerNorm; the tokens are reshaped back to a grid
and a 3x3 conv + BN + ReLU maps them to 512 channels. Each of the two decoders (TransUNet's cascaded
upsampler) repeats: bilinear x2 upsampling, concatenation with the skip, two 3x3 conv + BN + ReLU, back to
full resolution; 1x1 heads give the segmentation logits and the reconstruction of the input.

The position embedding is learned for a ``img_size`` grid and bicubically resized for other input sizes, so
any size divisible by 16 works.

Parameters with the defaults: 115,415,427 at 1 input channel / 2 classes. (Thesis Table 4.1 lists T2 at
172.62 M without describing its configuration; the ViT sizes are options.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ZooModel
from .registry import register_model
from .taps import TapSpec
from .unets import ConvBlock, UNetDecoder

__all__ = ["TransformerBlock", "ViTBottleneck", "MultiTaskTransUNet", "multitask_transunet"]


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``t + MHSA(LN(t))`` then ``t + MLP(LN(t))`` (GELU MLP).

    Args:
        hidden_size: token width.
        mlp_dim: MLP width.
        num_heads: attention heads.
        dropout: dropout of the attention output and the MLP.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))


class ViTBottleneck(nn.Module):
    """Patch embedding + transformer blocks; maps ``(B, C, H, W)`` to a token grid ``(B, hidden, H/p, W/p)``.

    Args:
        in_channels: channels of the incoming feature map.
        hidden_size: token width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        mlp_dim: MLP width.
        grid: reference token grid (rows, cols) of the learned position embedding.
        patch: patch size (stride of the embedding).
        dropout: dropout rate inside the blocks and after the embedding.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        grid: tuple[int, int] = (16, 16),
        patch: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.embed = nn.Conv2d(in_channels, hidden_size, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, hidden_size, *grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, mlp_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        pos = self.pos
        if pos.shape[2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        t = self.drop((x + pos).flatten(2).transpose(1, 2))  # (B, N, C)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


class _CNNEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(ConvBlock(2, chans[i], chans[i + 1], 2) for i in range(len(widths)))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class MultiTaskTransUNet(ZooModel):
    """TransUNet-style multi-task teacher (see module docstring).

    Args:
        in_channels: input channels (also the reconstruction's channels).
        num_classes: segmentation output channels.
        widths: CNN encoder widths (strides 1, 2, 4, 8); the transformer output is mapped to ``widths[-1]``.
        hidden_size: ViT token width.
        num_layers: ViT depth.
        num_heads: ViT heads.
        mlp_dim: ViT MLP width.
        img_size: input size the position embedding is laid out for.
        dropout: transformer dropout.

    Taps: ``encoder`` = ``cnn.blocks.2`` (``widths[2]``, stride 4), ``bottleneck`` = ``vit`` (the token grid,
    ``hidden_size`` channels, stride 16), ``decoder`` = last block of the segmentation decoder
    (``widths[0]``, stride 1), ``logits``, ``reconstruction`` = ``rec_head``.
    """

    model_name = "multitask_transunet"
    size_divisor = 16

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        img_size: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims=2)
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries (strides 1, 2, 4, 8), got {widths}")
        if img_size % 16:
            raise ValueError(f"img_size must be divisible by 16, got {img_size}")
        self.cnn = _CNNEncoder(in_channels, widths)
        grid = (img_size // 16, img_size // 16)
        self.vit = ViTBottleneck(widths[-1], hidden_size, num_layers, num_heads, mlp_dim, grid, 2, dropout)
        self.neck = ConvBlock(2, hidden_size, widths[-1], 1)
        dec_widths = (*widths, widths[-1])
        self.decoder = UNetDecoder(2, dec_widths, 2, "batch", "relu", upsample="interp")
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.rec_decoder = UNetDecoder(2, dec_widths, 2, "batch", "relu", upsample="interp")
        self.rec_head = nn.Conv2d(widths[0], in_channels, 1)
        self.feature_taps = {
            "encoder": TapSpec("cnn.blocks.2", widths[2], 4),
            "bottleneck": TapSpec("vit", hidden_size, 16),
            "decoder": TapSpec("decoder.blocks.3", widths[0], 1),
            "logits": TapSpec("", num_classes, 1),
            "reconstruction": TapSpec("rec_head", in_channels, 1),
        }

    def forward_multitask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(segmentation_logits, reconstruction)``."""
        self.check_input(x)
        skips = self.cnn(x)
        feats = [*skips, self.neck(self.vit(skips[-1]))]
        return self.head(self.decoder(feats)), self.rec_head(self.rec_decoder(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_multitask(x)[0]


@register_model(
    "multitask_transunet",
    role="teacher",
    spatial_dims=(2,),
    description="thesis T2: CNN + ViT-B/16 encoder (TransUNet-style), segmentation + reconstruction heads",
)
def multitask_transunet(
    in_channels: int,
    num_classes: int,
    widths: Sequence[int] = (64, 128, 256, 512),
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    img_size: int = 256,
    dropout: float = 0.0,
) -> MultiTaskTransUNet:
    """Build :class:`MultiTaskTransUNet`."""
    return MultiTaskTransUNet(
        in_channels, num_classes, widths, hidden_size, num_layers, num_heads, mlp_dim, img_size, dropout
    )
