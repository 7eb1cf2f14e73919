"""A foreign network as a medkd teacher: channels picked, intensities mapped, classes matched, output normalised.

:class:`TeacherAdapter` wraps the network as its submodule ``net``, so every module of it stays tappable by its
dotted path (``net.encoder.stages.2``) and the standard taps the loader declares point into it. Its forward:

1. picks and orders the input channels the teacher reads (:func:`medkd.teachers.mapping.match_channels`);
2. applies an element-wise intensity mapping, if it is given one;
3. runs the network and reduces its output to the full-resolution logits (deep supervision, dicts, lists);
4. merges the logits into the dataset's classes (:func:`medkd.teachers.mapping.match_classes`).

A teacher that was trained on its own per-case normalisation (nnU-Net's) declares it as ``input_normalization``:
the data path applies it to the teacher's channels of every case (:class:`medkd.data.pipeline.TeacherCopy`), so
the inputs reach the adapter already normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from medkd.models.taps import normalize_output

__all__ = ["TeacherAdapter", "merge_classes"]


def merge_classes(logits: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits of the dataset's classes: for each group of teacher classes, the ``logsumexp`` of their logits.

    ``softmax`` of the result is the teacher's probabilities added up per group; a one-class group keeps its
    logit exactly, so a plain re-ordering is exact.
    """
    if all(len(g) == 1 for g in groups):
        order = [g[0] for g in groups]
        return logits if order == list(range(logits.shape[1])) else logits[:, order]
    return torch.stack([torch.logsumexp(logits[:, list(g)], dim=1) for g in groups], dim=1)


class TeacherAdapter(nn.Module):
    """A network trained elsewhere, seen by medkd as a teacher of the run's dataset.

    Args:
        net: the network (its forward takes ``(B, C, *spatial)``).
        channels: positions of the teacher's inputs among the channels the pipeline gives it.
        groups: teacher output channels per dataset class (:func:`merge_classes`).
        intensity: element-wise mapping of the picked inputs (None: none).
        spatial_dims: 2 or 3 (for deep-supervision stacks), or None.
        input_normalization: the per-case normalisation (NumPy, ``(C, *spatial)`` of the given channels) the
            data path must apply before the adapter sees the inputs; None: medkd's preprocessing is what it reads.
    """

    def __init__(self, net: nn.Module, channels: Sequence[int], groups: Sequence[Sequence[int]],
                 intensity: Callable[[torch.Tensor], torch.Tensor] | None = None, spatial_dims: int | None = None,
                 input_normalization: Callable[[np.ndarray], np.ndarray] | None = None):
        super().__init__()
        self.net = net
        self.channels = list(channels)
        self.groups = [list(g) for g in groups]
        self.intensity = intensity
        self.spatial_dims = spatial_dims
        self.input_normalization = input_normalization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels != list(range(x.shape[1])):
            x = x[:, self.channels]
        if self.intensity is not None:
            x = self.intensity(x)
        logits = normalize_output(self.net(x), self.spatial_dims)
        return merge_classes(logits, self.groups)
