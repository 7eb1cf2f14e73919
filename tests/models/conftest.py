"""Shared fixtures for the model-zoo tests: every big network is built once per session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from medkd.models import create_model


@pytest.fixture(scope="session")
def build() -> Callable[..., nn.Module]:
    """``build(name, spatial_dims, **options)``: a 1-in / 2-class model, built once per session."""
    cache: dict[tuple[Any, ...], nn.Module] = {}

    def _build(name: str, spatial_dims: int = 2, **options: Any) -> nn.Module:
        key = (name, spatial_dims, tuple(sorted(options.items())))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = create_model(name, 1, 2, spatial_dims=spatial_dims, **options)
        return cache[key]

    return _build
