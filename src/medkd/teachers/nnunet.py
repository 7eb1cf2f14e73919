"""A trained nnU-Net v2 model as a teacher (``distill.teacher: {nnunet: FOLDER, fold: 0}``).

``FOLDER`` is ``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>``, holding ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``. The network is rebuilt with nnU-Net's own architecture
package (``dynamic-network-architectures``, ``pip install medkd[nnunet]``) from the configuration's
``architecture`` entry (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``); only classes of that
package and of ``torch.nn`` are imported. It is built without deep supervision (same weights; the output is the
full-resolution map). The checkpoint's ``network_weights`` are read with ``weights_only=True``
(:mod:`medkd.teachers.safe_load`). Taps: ``encoder`` (the middle encoder stage), ``bottleneck`` (the last encoder
stage), ``decoder`` (the last decoder stage), ``logits``.

Intensities: the plan's own normalisation (:mod:`medkd.teachers.nnunet_norm`), whatever the run's
``data.normalize``. The loaded teacher declares it as ``input_normalization``; the data path then holds the
teacher's own copy of its channels, normalised that way per case (:class:`medkd.data.pipeline.TeacherCopy`), and
the network reads that copy as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from torch import nn

from medkd.config import TeacherConfig
from medkd.errors import ConfigError
from medkd.models.taps import TapSpec
from medkd.teachers.adapter import TeacherAdapter
from medkd.teachers.base import TeacherInputs, opaque_taps
from medkd.teachers.mapping import match_channels, match_classes
from medkd.teachers.nnunet_norm import NnUNetNormalization, nnunet_normalization
from medkd.teachers.safe_load import load_weights_only

__all__ = ["build_nnunet_network", "check_nnunet_source", "load_nnunet_teacher", "nnunet_checkpoint",
           "nnunet_input_normalization", "plan_configuration"]

WHERE = "distill.teacher.nnunet"
_IMPORTABLE = ("torch.nn.", "dynamic_network_architectures.")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{WHERE} {path.parent}: {path.name} missing (not a trained nnU-Net v2 model folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{WHERE}: {path}: not valid JSON (line {exc.lineno})") from None


def nnunet_checkpoint(tcfg: TeacherConfig) -> Path:
    """The checkpoint file: ``checkpoint`` itself when it is a file, else that name inside ``fold_N``."""
    name = tcfg.checkpoint or "checkpoint_final.pth"
    if Path(name).is_file():
        return Path(name)
    return Path(tcfg.nnunet) / f"fold_{tcfg.fold if tcfg.fold is not None else 0}" / Path(name).name


def check_nnunet_source(tcfg: TeacherConfig) -> None:
    """Check the folder, its JSON files, the checkpoint and the optional package (reads no weights)."""
    folder = Path(tcfg.nnunet)
    if not folder.is_dir():
        raise ConfigError(f"{WHERE} {folder}: folder not found")
    for name in ("plans.json", "dataset.json"):
        _read_json(folder / name)
    ckpt = nnunet_checkpoint(tcfg)
    if not ckpt.is_file():
        raise ConfigError(f"{WHERE} {folder}: checkpoint {ckpt} not found (distill.teacher.fold / checkpoint)")
    if importlib.util.find_spec("dynamic_network_architectures") is None:
        raise ConfigError(f"{WHERE}: needs the optional package dynamic-network-architectures "
                          "(pip install medkd[nnunet])")


def plan_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """A configuration of ``plans.json`` with the entries of the one it ``inherits_from`` filled in."""
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ConfigError(f"{WHERE}: plans.json has no configuration {name!r} ({', '.join(configs)})")
    config = dict(configs[name])
    parent = config.pop("inherits_from", None)
    return {**plan_configuration(plans, parent), **config} if parent else config


def _import(dotted: str, kind: type) -> Any:
    """A class named in plans.json, imported only from torch.nn or dynamic_network_architectures."""
    if not isinstance(dotted, str) or not dotted.startswith(_IMPORTABLE) or "." not in dotted:
        raise ConfigError(f"{WHERE}: plans.json names {dotted!r}; medkd imports only classes of "
                          "dynamic_network_architectures and torch.nn")
    module, attr = dotted.rsplit(".", 1)
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ConfigError(f"{WHERE}: plans.json names {dotted!r}, which is not installed") from None
    if not (isinstance(obj, type) and issubclass(obj, kind)):
        raise ConfigError(f"{WHERE}: plans.json names {dotted!r}, which is not a {kind.__name__}")
    return obj


def build_nnunet_network(architecture: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The plan's network, built by dynamic-network-architectures without deep supervision."""
    if importlib.util.find_spec("dynamic_network_architectures") is None:
        raise ConfigError(f"{WHERE}: needs dynamic-network-architectures (pip install medkd[nnunet])")
    if "network_class_name" not in architecture:
        raise ConfigError(f"{WHERE}: plans.json has no architecture.network_class_name (a plans file of "
                          "nnU-Net v2.4 or later is needed)")
    cls = _import(architecture["network_class_name"], nn.Module)
    kwargs = dict(architecture.get("arch_kwargs", {}))
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            kwargs[key] = _import(kwargs[key], nn.Module)
    try:
        return cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"{WHERE}: cannot build {cls.__name__} from plans.json ({str(exc).splitlines()[0]})") \
            from None


def _names(dataset: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The teacher's channel names (input order) and class names (output order) from its dataset.json."""
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    labels = dataset.get("labels", {})
    if any(not isinstance(v, int) for v in labels.values()):
        raise ConfigError(f"{WHERE}: dataset.json declares regions (label lists); region-based nnU-Net models "
                          "are not supported as teachers")
    classes = [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1]) if n != "ignore"]
    return [channels[k] for k in sorted(channels, key=int)], classes


def _stage_taps(net: nn.Module, architecture: dict[str, Any]) -> dict[str, TapSpec]:
    """``encoder`` / ``bottleneck`` / ``decoder`` taps by the network's stages (none for other layouts)."""
    kw = architecture.get("arch_kwargs", {})
    modules = dict(net.named_modules())
    features, strides = kw.get("features_per_stage"), kw.get("strides")
    if not isinstance(features, list) or not isinstance(strides, list) or "encoder.stages" not in modules:
        return {}
    n = len(features)
    reduction, reductions = 1, []
    for s in strides:
        reduction *= s[0] if isinstance(s, list) else s
        reductions.append(reduction)
    mid = (n - 1) // 2
    specs = {"encoder": TapSpec(f"net.encoder.stages.{mid}", features[mid], reductions[mid]),
             "bottleneck": TapSpec(f"net.encoder.stages.{n - 1}", features[-1], reductions[-1]),
             "decoder": TapSpec(f"net.decoder.stages.{n - 2}", features[0], reductions[0])}
    return {k: v for k, v in specs.items() if v.path[4:] in modules}


def _network_weights(checkpoint: Any, path: Path) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ConfigError(f"{WHERE}: {path}: no 'network_weights' (not an nnU-Net v2 checkpoint)")
    out = {}
    for key, value in checkpoint["network_weights"].items():
        for prefix in ("_orig_mod.", "module."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def _picked_channels(channels: list[str], inputs: TeacherInputs) -> list[int]:
    """Positions, among the channels the run gives, of the teacher's channels (in its input order)."""
    picked = match_channels(channels if inputs.channel_names is not None else None, inputs.given_channels(), WHERE)
    if len(picked) != len(channels):
        raise ConfigError(f"{WHERE}: the teacher reads {len(channels)} channel(s) {channels}, the run gives "
                          f"{inputs.in_channels}; set data.teacher_channels")
    return picked


def _plan_normalization(plans: dict[str, Any], config: dict[str, Any], channels: list[str], picked: list[int],
                        inputs: TeacherInputs) -> NnUNetNormalization:
    """The configuration's normalisation, laid out on the channels the run gives the teacher."""
    return nnunet_normalization(config.get("normalization_schemes", []), config.get("use_mask_for_norm", []),
                                plans.get("foreground_intensity_properties_per_channel", {}), channels, picked,
                                inputs.in_channels, WHERE)


def nnunet_input_normalization(tcfg: TeacherConfig, inputs: TeacherInputs) -> NnUNetNormalization:
    """The normalisation the data path must give the teacher of ``tcfg`` (reads its JSON files, no weights).

    It equals ``load_nnunet_teacher(tcfg, inputs).input_normalization``, e.g. for preparing the training samples
    ahead of time.
    """
    check_nnunet_source(tcfg)
    folder = Path(tcfg.nnunet)
    plans, dataset = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    config = plan_configuration(plans, tcfg.configuration or folder.name.split("__")[-1])
    channels, _ = _names(dataset)
    return _plan_normalization(plans, config, channels, _picked_channels(channels, inputs), inputs)


def load_nnunet_teacher(tcfg: TeacherConfig, inputs: TeacherInputs) -> nn.Module:
    """The nnU-Net model of ``tcfg`` as a :class:`TeacherAdapter` for the run described by ``inputs``."""
    check_nnunet_source(tcfg)
    inputs.check_plain(WHERE)
    folder = Path(tcfg.nnunet)
    plans, dataset = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    name = tcfg.configuration or folder.name.split("__")[-1]
    config = plan_configuration(plans, name)
    architecture = config.get("architecture", {})
    channels, classes = _names(dataset)
    net = build_nnunet_network(architecture, len(channels), len(classes))
    dim = 3 if "3d" in str(architecture.get("arch_kwargs", {}).get("conv_op", "")).lower() else 2
    if dim != inputs.dim:
        raise ConfigError(f"{WHERE}: the teacher's configuration {name!r} is {dim}D, the run is {inputs.dim}D")
    path = nnunet_checkpoint(tcfg)
    checkpoint = load_weights_only(path, WHERE)
    trained = checkpoint.get("init_args", {}).get("configuration") if isinstance(checkpoint, dict) else None
    if trained not in (None, name):
        raise ConfigError(f"{WHERE}: {path} was trained with configuration {trained!r}, not {name!r}")
    try:
        net.load_state_dict(_network_weights(checkpoint, path))
    except RuntimeError as exc:
        raise ConfigError(f"{WHERE}: {path}: weights do not fit plans.json "
                          f"({str(exc).strip().splitlines()[-1].strip()})") from None
    picked = _picked_channels(channels, inputs)
    norm = _plan_normalization(plans, config, channels, picked, inputs)
    named = classes if inputs.class_names is not None else [str(i) for i in range(len(classes))]
    groups = match_classes(named, inputs.classes(), tcfg.teacher_label_map, WHERE)
    adapter = TeacherAdapter(net, picked, groups, spatial_dims=dim, input_normalization=norm)
    return opaque_taps(adapter, inputs.num_classes, _stage_taps(net, architecture))
