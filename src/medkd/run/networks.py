"""The networks a run builds: a zoo (or ``monai.*``) model, optionally with saved safetensors weights."""

from __future__ import annotations

from pathlib import Path

import torch

from medkd.config import ModelConfig
from medkd.models import create_model
from medkd.weights import load_model_weights

__all__ = ["build_network", "load_network"]


def build_network(model_cfg: ModelConfig, in_channels: int, num_classes: int, dim: int) -> torch.nn.Module:
    """Create a zoo (or ``monai.*``) network for a run."""
    return create_model(model_cfg.name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dim,
                        **model_cfg.kwargs)


def load_network(model_cfg: ModelConfig, in_channels: int, num_classes: int, dim: int,
                 weights: Path) -> torch.nn.Module:
    """:func:`build_network` with the weights of ``weights`` loaded, in eval mode."""
    model = build_network(model_cfg, in_channels, num_classes, dim)
    load_model_weights(model, Path(weights))
    model.eval()
    return model
