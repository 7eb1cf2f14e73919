"""medkd.models: the model zoo (students and teachers), the registry, feature taps and efficiency numbers.

Example::

    import torch
    from medkd.models import create_model, list_models, tap_features

    list_models(role="student")          # ['enet', 'erfnet', 'espnet', 'unet3d_small', 'unet_s1', 'unet_s2']
    net = create_model("enet", in_channels=1, num_classes=2)
    feats = tap_features(net, torch.randn(2, 1, 64, 64))   # encoder, bottleneck, decoder, logits
"""

from __future__ import annotations

from . import deeplab, enet, erfnet, espnet, kdnet3d, multitask, transunet, unets  # noqa: F401  (registers)
from .layers import ZooModel, count_parameters
from .registry import ModelEntry, create_model, list_models, model_info, register_model
from .taps import (
    STANDARD_TAPS,
    FeatureTapper,
    TapError,
    TapSpec,
    normalize_output,
    probe_tap_specs,
    set_tap_specs,
    tap_features,
    tap_specs,
)

__all__ = [
    "STANDARD_TAPS",
    "FeatureTapper",
    "ModelEntry",
    "TapError",
    "TapSpec",
    "ZooModel",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "normalize_output",
    "probe_tap_specs",
    "register_model",
    "set_tap_specs",
    "tap_features",
    "tap_specs",
]
