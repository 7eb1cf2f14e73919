"""What a teacher loader is told about the run, and what every loaded teacher becomes (frozen, tapped)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from medkd.errors import ConfigError
from medkd.models.taps import TapSpec, set_tap_specs

__all__ = ["TeacherInputs", "freeze", "opaque_taps"]


@dataclass
class TeacherInputs:
    """What the run gives the teacher.

    Attributes:
        in_channels: input channels the pipeline gives it (``data.teacher_channels``, times 2.5D neighbours).
        num_classes: classes of the dataset.
        dim: 2 or 3.
        channel_names: names of the dataset channels it is given, in order (None: unknown, e.g. in a direct call).
        class_names: the dataset's class names, background first (None: ``"0"``, ``"1"``, ...).
        normalize: the run's ``data.normalize`` (None: unknown); a teacher with its own normalisation does not
            depend on it (it declares ``input_normalization`` and the data path gives it its own copy).
        neighbours: 2.5D neighbour slices per side (``data.neighbours``).
    """

    in_channels: int
    num_classes: int
    dim: int
    channel_names: list[str] | None = None
    class_names: list[str] | None = None
    normalize: str | None = None
    neighbours: int = 0

    @classmethod
    def of_run(cls, cfg: Any, bundle: Any) -> TeacherInputs:
        """What a run of ``cfg`` gives its teacher, from its data bundle (:class:`medkd.data.loader.DataBundle`)."""
        names = [bundle.index.channel_names[i] for i in bundle.teacher_channels or []]
        return cls(bundle.teacher_in_channels or 0, bundle.num_classes, cfg.data.dim, names, bundle.class_names,
                   cfg.data.normalize, cfg.data.neighbours)

    def given_channels(self) -> list[str]:
        """Names of the channels the teacher is given (``"0"``, ``"1"``, ... when unknown)."""
        return list(self.channel_names) if self.channel_names is not None \
            else [str(i) for i in range(self.in_channels)]

    def classes(self) -> list[str]:
        """The dataset's class names (``"0"``, ``"1"``, ... when unknown)."""
        return list(self.class_names) if self.class_names is not None \
            else [str(i) for i in range(self.num_classes)]

    def check_plain(self, where: str) -> None:
        """Refuse 2.5D neighbour channels, which a teacher trained elsewhere never read."""
        if self.neighbours:
            raise ConfigError(f"{where}: a teacher trained outside medkd reads no 2.5D neighbour slices; "
                              "set data.neighbours: 0")


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode and no gradients (the teacher is never trained); returns ``teacher``."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def opaque_taps(model: nn.Module, num_classes: int, specs: Mapping[str, TapSpec] | None = None) -> nn.Module:
    """Declare ``model``'s standard taps: ``specs`` plus ``logits`` (the model output); returns ``model``."""
    return set_tap_specs(model, {**dict(specs or {}), "logits": TapSpec("", num_classes, 1)})
