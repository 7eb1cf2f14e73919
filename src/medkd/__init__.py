"""medkd: knowledge distillation for medical image segmentation."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
