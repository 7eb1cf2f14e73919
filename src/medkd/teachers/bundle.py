"""A MONAI bundle as a teacher (``distill.teacher: {bundle: BUNDLE_DIR}``).

The network is the bundle's ``network_def`` of ``configs/inference.json``, instantiated by MONAI's
``ConfigParser`` (so a bundle's config is trusted like its code); its weights are ``models/model.pt`` (a state
dict, or a dict holding one under ``model``), read with ``weights_only=True``. Nothing is downloaded. Channel and
class names come from ``configs/metadata.json`` (``network_data_format``: the first input's and output's
``channel_def``) and are matched to the dataset's by name. The bundle's own pre-processing transforms are not
applied: the teacher sees medkd's pre-processing. Taps: ``logits`` and any dotted module path (``net.<module>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from torch import nn

from medkd.config import TeacherConfig
from medkd.errors import ConfigError
from medkd.teachers.adapter import TeacherAdapter
from medkd.teachers.base import TeacherInputs, opaque_taps
from medkd.teachers.mapping import match_channels, match_classes
from medkd.teachers.safe_load import load_weights_only

__all__ = ["bundle_names", "check_bundle_source", "load_bundle_teacher"]

WHERE = "distill.teacher.bundle"


def check_bundle_source(tcfg: TeacherConfig) -> None:
    """Check that the bundle folder holds ``configs/inference.json`` and ``models/model.pt`` (reads neither)."""
    root = Path(tcfg.bundle)
    if not root.is_dir():
        raise ConfigError(f"{WHERE} {root}: folder not found")
    for rel in ("configs/inference.json", "models/model.pt"):
        if not (root / rel).is_file():
            raise ConfigError(f"{WHERE} {root}: {rel} missing (not a MONAI bundle with trained weights)")


def _channel_def(entry: Any, count: int | None) -> list[str] | None:
    """Names of ``channel_def`` in channel order (None when the metadata names none)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("channel_def"), dict):
        return None
    names = entry["channel_def"]
    ordered = [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
    return ordered if count is None or len(ordered) == count else None


def bundle_names(root: Path) -> tuple[list[str] | None, list[str] | None, int | None]:
    """The bundle's input channel names, output class names and spatial dims from ``configs/metadata.json``."""
    path = Path(root) / "configs" / "metadata.json"
    if not path.is_file():
        return None, None, None
    try:
        fmt = json.loads(path.read_text()).get("network_data_format", {})
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{WHERE}: {path}: not valid JSON (line {exc.lineno})") from None
    first_in = next(iter(fmt.get("inputs", {}).values()), {})
    first_out = next(iter(fmt.get("outputs", {}).values()), {})
    shape = first_in.get("spatial_shape") if isinstance(first_in, dict) else None
    channels = _channel_def(first_in, first_in.get("num_channels"))
    classes = _channel_def(first_out, first_out.get("num_channels"))
    return channels, classes, len(shape) if isinstance(shape, list) else None


def _network(root: Path) -> nn.Module:
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    if "network_def" not in parser.config:
        raise ConfigError(f"{WHERE}: {root}/configs/inference.json has no network_def")
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as exc:  # noqa: BLE001 - MONAI raises many kinds for a bad config
        raise ConfigError(f"{WHERE}: {root}/configs/inference.json: cannot build network_def "
                          f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{WHERE}: {root}/configs/inference.json: network_def is not a torch module")
    return net


def load_bundle_teacher(tcfg: TeacherConfig, inputs: TeacherInputs) -> nn.Module:
    """The bundle's network with its trained weights, as a :class:`TeacherAdapter` for the run."""
    check_bundle_source(tcfg)
    inputs.check_plain(WHERE)
    root = Path(tcfg.bundle)
    channels, classes, dims = bundle_names(root)
    if dims is not None and dims != inputs.dim:
        raise ConfigError(f"{WHERE}: the bundle's network is {dims}D (metadata.json), the run is {inputs.dim}D")
    net = _network(root)
    state = load_weights_only(root / "models" / "model.pt", WHERE)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{WHERE}: {root}/models/model.pt: weights do not fit network_def "
                          f"({str(exc).strip().splitlines()[-1].strip()})") from None
    use_names = channels if inputs.channel_names is not None else None
    picked = match_channels(use_names, inputs.given_channels(), WHERE)
    n_out = len(classes) if classes is not None else inputs.num_classes
    named = classes if classes is not None and inputs.class_names is not None else [str(i) for i in range(n_out)]
    groups = match_classes(named, inputs.classes(), tcfg.teacher_label_map, WHERE)
    return opaque_taps(TeacherAdapter(net, picked, groups, spatial_dims=inputs.dim), inputs.num_classes)
