"""Match a foreign teacher's input channels and classes to the student's dataset, by name.

A teacher trained elsewhere (nnU-Net, a MONAI bundle, an exported file) reads its channels in its own order and
predicts its own label values. The data pipeline gives it the dataset channels of ``data.teacher_channels``
(default: the student's); :func:`match_channels` picks and orders them by the teacher's channel names.
:func:`match_classes` groups the teacher's classes by the dataset class each one stands for (by name, by
``distill.teacher.teacher_label_map``, or by position for a teacher without names); the teacher's logits of a
group are merged with ``logsumexp``, which adds their probabilities (one class per group: the logit itself).

Example:
    >>> match_channels(["T2", "ADC"], ["adc", "t2"], "distill.teacher.nnunet x")
    [1, 0]
    >>> match_classes(["background", "tumour"], ["background", "Tumour"], None, "distill.teacher.bundle x")
    [[0], [1]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medkd.errors import ConfigError

__all__ = ["match_channels", "match_classes"]


def match_channels(teacher: Sequence[str] | None, given: Sequence[str], where: str) -> list[int]:
    """Positions, in ``given``, of each channel the teacher reads (matched case-insensitively by name).

    Args:
        teacher: the teacher's channel names in its input order; None: it declares none (read ``given`` as is).
        given: names of the dataset channels the pipeline gives the teacher (``data.teacher_channels``).
        where: the config key naming the teacher, for errors.

    Raises:
        ConfigError: a teacher channel the pipeline does not give, or a count mismatch without names.
    """
    if teacher is None:
        return list(range(len(given)))
    lower = [g.lower() for g in given]
    out = []
    for name in teacher:
        if name.lower() not in lower:
            raise ConfigError(f"{where}: the teacher reads channel {name!r}, which data.teacher_channels "
                              f"{list(given)} does not give; list the dataset channel(s) it reads there")
        out.append(lower.index(name.lower()))
    return out


def _key_of(teacher: Sequence[str], key: str, where: str) -> int:
    """Index of a ``teacher_label_map`` key: a teacher class name, or an output index written as text."""
    lower = [t.lower() for t in teacher]
    if key.lower() in lower:
        return lower.index(key.lower())
    if key.strip().isdigit() and int(key) < len(teacher):
        return int(key)
    raise ConfigError(f"distill.teacher.teacher_label_map: {key!r} is not a class of {where} ({list(teacher)})")


def match_classes(teacher: Sequence[str], student: Sequence[str], label_map: Mapping[str, str] | None,
                  where: str) -> list[list[int]]:
    """For every dataset class (in order), the teacher output channels that stand for it.

    Args:
        teacher: the teacher's class names in output order (``"0"``, ``"1"``, ... for a teacher without names).
        student: the dataset's class names (background first).
        label_map: explicit teacher class -> dataset class; classes not in it are matched by name.
        where: the config key naming the teacher, for errors.

    Raises:
        ConfigError: a dataset class no teacher class stands for, a teacher class left unmatched (its
            probability would be lost), or a ``teacher_label_map`` entry naming an unknown class.
    """
    s_lower = [s.lower() for s in student]
    target: dict[int, int] = {}
    for key, value in (label_map or {}).items():
        if str(value).lower() not in s_lower:
            raise ConfigError(f"distill.teacher.teacher_label_map: {value!r} is not a class of the dataset "
                              f"({list(student)})")
        target[_key_of(teacher, str(key), where)] = s_lower.index(str(value).lower())
    unnamed = all(t.isdigit() for t in teacher)
    for i, name in enumerate(teacher):
        if i in target:
            continue
        if name.lower() in s_lower:
            target[i] = s_lower.index(name.lower())
        elif unnamed and len(teacher) == len(student):
            target[i] = i
        elif unnamed:
            raise ConfigError(f"{where}: the teacher predicts {len(teacher)} classes, the dataset has "
                              f"{len(student)} ({list(student)}); map its outputs with "
                              "distill.teacher.teacher_label_map, e.g. {'0': background}")
        else:
            raise ConfigError(f"{where}: the teacher's class {name!r} matches no class of the dataset "
                              f"({list(student)}); map it with distill.teacher.teacher_label_map")
    groups = [[i for i in range(len(teacher)) if target[i] == j] for j in range(len(student))]
    for j, group in enumerate(groups):
        if not group:
            raise ConfigError(f"{where}: no class of the teacher ({list(teacher)}) stands for the dataset's class "
                              f"{student[j]!r}; map one with distill.teacher.teacher_label_map")
    return groups
