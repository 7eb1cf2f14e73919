"""DeepLabV3+ teacher (Chen et al., ECCV 2018) from segmentation-models-pytorch, never with downloaded weights.

Backbone: ResNet-101 (``encoder_name="resnet101"``, output stride 16, ASPP rates 12/24/36, 256 decoder
channels), randomly initialised (``encoder_weights=None``): 45,663,698 parameters at 1 input channel /
2 classes. Paper A reports 56.8 M for its (unpublished) DeepLabV3+ configuration; any smp encoder name can be
chosen with ``encoder_name`` (e.g. ``"resnet152"``: 61.3 M, ``"tu-regnetx_160"``: 55.4 M).
"""

from __future__ import annotations

import torch

from medkd.errors import ConfigError

from .layers import ZooModel
from .registry import register_model
from .taps import TapSpec

__all__ = ["DeepLabV3Plus", "deeplabv3plus"]


class DeepLabV3Plus(ZooModel):
    """smp ``DeepLabV3Plus`` with declared taps.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder_name: smp encoder name (weights are never downloaded).
        decoder_channels: ASPP / decoder width.
        output_stride: 8 or 16.

    Taps: ``encoder`` = ``net.encoder.layer2`` (stride 8 for ResNets), ``bottleneck`` = ``net.decoder.aspp``
    (``decoder_channels``, stride ``output_stride``), ``decoder`` = ``net.decoder.block2`` (the fused
    decoder features, stride 4), ``logits``. Taps are declared for ResNet-style encoders (whose stages are
    named ``layer1`` .. ``layer4``); with other encoders only ``bottleneck``, ``decoder`` and ``logits``.
    """

    model_name = "deeplabv3plus"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet101",
        decoder_channels: int = 256,
        output_stride: int = 16,
    ) -> None:
        super().__init__(spatial_dims=2)
        try:
            import segmentation_models_pytorch as smp  # lazy: heavy (~1.4 s, pulls timm); only deeplab needs it
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ConfigError("deeplabv3plus needs the package segmentation-models-pytorch") from err
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        try:
            self.net = smp.DeepLabV3Plus(
                encoder_name=encoder_name,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
                decoder_channels=decoder_channels,
                encoder_output_stride=output_stride,
            )
        except KeyError as err:
            raise ValueError(f"unknown segmentation-models-pytorch encoder {encoder_name!r}") from err
        self.size_divisor = max(16, output_stride)
        self.feature_taps = {
            "bottleneck": TapSpec("net.decoder.aspp", decoder_channels, output_stride),
            "decoder": TapSpec("net.decoder.block2", decoder_channels, 4),
            "logits": TapSpec("", num_classes, 1),
        }
        names = dict(self.net.named_modules())
        if "encoder.layer2" in names:
            channels = getattr(self.net.encoder, "out_channels", None)
            ch = channels[3] if channels is not None and len(channels) > 3 else None
            if ch is not None:
                self.feature_taps = {"encoder": TapSpec("net.encoder.layer2", int(ch), 8), **self.feature_taps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)


@register_model(
    "deeplabv3plus",
    role="teacher",
    spatial_dims=(2,),
    description="DeepLabV3+ (smp), ResNet-101 backbone, no pretrained weights: 45.7 M at 1 in / 2 out",
)
def deeplabv3plus(
    in_channels: int,
    num_classes: int,
    encoder_name: str = "resnet101",
    decoder_channels: int = 256,
    output_stride: int = 16,
) -> DeepLabV3Plus:
    """Build :class:`DeepLabV3Plus`."""
    return DeepLabV3Plus(in_channels, num_classes, encoder_name, decoder_channels, output_stride)
