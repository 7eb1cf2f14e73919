"""``medkd predict``: label maps for NIfTI images, written with the input's affine and shape.

Two engines run the network: ``torch`` (the run's best weights, CPU or CUDA) and ``onnx`` (the run's ONNX
export with onnxruntime's CPU provider, :class:`medkd.onnx_runtime.OnnxPredictor`; a run without a current export
is exported first, see :func:`medkd.export.resolve_onnx_export`). Both apply the same preprocessing and write the
same label maps.

Inputs are NIfTI files or folders of them. Files named like nnU-Net channels (``<case>_0000.nii.gz``,
``<case>_0001.nii.gz``) are grouped into one multi-channel case; any other file is one case (a 4D file
holds its channels on the last axis). Output: ``OUT/<case>.nii.gz`` with the dataset's label values.

Nothing a user has is lost: every input is read and checked before anything is written; an output that would
replace an input file (MSD-style names with ``--out`` the image folder) is refused, and so is one that would
replace any existing file unless ``overwrite`` is set; the label maps of one call appear all together or, after
an error, not at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medkd.config import DataConfig
from medkd.data.nifti_io import read_nifti, write_nifti
from medkd.data.pipeline import prepare_arrays
from medkd.errors import DataError, MedkdError, unknown_name_error
from medkd.export import resolve_onnx_export
from medkd.inference import predict_volume, predicted_classes
from medkd.io import staged_files
from medkd.onnx_runtime import OnnxPredictor
from medkd.run import RunFolder

__all__ = ["ENGINES", "collect_inputs", "predict_files"]

#: ``medkd predict --engine`` values.
ENGINES: tuple[str, ...] = ("torch", "onnx")

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")


def _case_name(path: Path) -> str:
    return _NIFTI.sub("", path.name)


def collect_inputs(inputs: Sequence[str | Path], n_channels: int) -> dict[str, list[Path]]:
    """Group input files into cases: case id -> channel files (or one multi-channel file)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if _NIFTI.search(f.name))
            if not found:
                raise DataError(f"{p}: no .nii / .nii.gz files in folder")
            files.extend(found)
        elif p.is_file():
            if not _NIFTI.search(p.name):
                raise DataError(f"{p}: not a NIfTI file (.nii or .nii.gz)")
            files.append(p)
        else:
            raise DataError(f"{p}: input not found")
    cases: dict[str, list[Path]] = {}
    for f in files:
        m = _CHANNEL.match(f.name)
        if m is not None and n_channels > 1:
            cases.setdefault(m["case"], []).append(f)
        else:
            cases.setdefault(m["case"] if m is not None else _case_name(f), []).append(f)
    for cid, fs in cases.items():
        fs.sort()
        if len(fs) not in (1, n_channels):
            raise DataError(f"{fs[0]}: case {cid!r} has {len(fs)} channel files, the model reads {n_channels}")
    return cases


def _spatial(array: np.ndarray, path: Path) -> np.ndarray:
    """One channel's voxels as a 3D array (a 2D image gets a trailing axis of 1)."""
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a single-channel 2D or 3D image, got shape {array.shape}")
    return array


def _load_case(files: list[Path], n_channels: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Channels-first image, affine and the original voxel shape of one input case."""
    if len(files) == n_channels:
        arrays = [read_nifti(f) for f in files]
        original = arrays[0][0].shape
        volumes = [_spatial(a, f) for f, (a, _) in zip(files, arrays)]
        for f, v in zip(files, volumes):
            if v.shape != volumes[0].shape:
                raise DataError(f"{f}: shape {v.shape} differs from {files[0].name} {volumes[0].shape}")
        return np.stack(volumes).astype(np.float32), arrays[0][1], original
    data, affine = read_nifti(files[0])
    if data.ndim != 4 or data.shape[-1] != n_channels:
        raise DataError(f"{files[0]}: expected {n_channels} channels on the last axis, got shape {data.shape}")
    return np.moveaxis(data, -1, 0).astype(np.float32), affine, data.shape[:-1]


def _torch_engine(run_dir: Path, device: str | None) -> tuple[Callable, dict[str, Any], torch.device]:
    """The run's best network on ``device`` and what prediction needs (data settings, channels, label values)."""
    run = RunFolder(run_dir)
    model, cfg = run.load_model()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup = {"data": cfg.data, "channels": len(run.channels()), "label_values": run.label_values(cfg),
             "batch_size": cfg.evaluate.batch_size, "sw_overlap": cfg.evaluate.sw_overlap}
    return model.to(dev), setup, dev


def _onnx_engine(target: Path, device: str | None) -> tuple[Callable, dict[str, Any], torch.device]:
    """An :class:`~medkd.onnx_runtime.OnnxPredictor` of the target's (current) export and its sidecar's setup."""
    if device not in (None, "cpu"):
        raise MedkdError(f"--device {device}: the onnx engine runs on the CPU (onnxruntime's CPU provider)")
    path, info, _ = resolve_onnx_export(target)
    if info.get("format") != "onnx" or info.get("dim") not in (2, 3):
        raise MedkdError(f"{path}: the export sidecar does not describe an ONNX export of a 2D or 3D network")
    try:
        data = DataConfig.model_validate(info["data"])
        setup = {"data": data, "channels": len(info["channels"]), "label_values": [int(v) for v in
                                                                                     info["label_values"]],
                 "batch_size": int(info["evaluate"]["batch_size"]), "sw_overlap": float(info["evaluate"]["sw_overlap"])}
        if isinstance(info["input_shape"][0], int):  # exported with a fixed batch size
            setup["batch_size"] = int(info["input_shape"][0])
    except (KeyError, TypeError, ValueError) as err:
        raise MedkdError(f"{path}: incomplete export sidecar ({err.__class__.__name__}: {err}); export again") \
            from None
    return OnnxPredictor(path), setup, torch.device("cpu")


def _check_outputs(targets: dict[str, Path], cases: dict[str, list[Path]], overwrite: bool) -> None:
    """Refuse (before anything is written) an output that would replace an input or, without ``overwrite``,
    any existing file."""
    inputs = [f for files in cases.values() for f in files]
    by_path = {f.resolve(): f for f in inputs}
    by_inode = {}
    for f in inputs:
        st = f.stat()
        by_inode[(st.st_dev, st.st_ino)] = f
    for target in targets.values():
        clash = by_path.get(target.resolve())
        if clash is None and target.exists():
            st = target.stat()
            clash = by_inode.get((st.st_dev, st.st_ino))
        if clash is not None:
            same = "" if str(clash) == str(target) else f" {clash} (the same file)"
            raise MedkdError(f"{target}: the label map would replace the input image{same}; choose another --out "
                             "folder (nothing was written)")
        if target.is_dir() and not target.is_symlink():
            raise MedkdError(f"{target}: a folder is in the way of this output (nothing was written)")
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise MedkdError(f"{target}: output file exists; pass --overwrite to replace it (nothing was written)")


def _read_cases(cases: dict[str, list[Path]], n_channels: int) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                                                   tuple[int, ...]]]:
    """Read and check every input case (shapes, channel count, finite voxels) before anything is predicted."""
    loaded = {}
    for cid, files in cases.items():
        image, affine, shape = _load_case(files, n_channels)
        finite = np.isfinite(image.reshape(len(image), -1)).all(axis=1)
        if not finite.all():
            bad = files[int(np.argmin(finite))] if len(files) == len(image) else files[0]
            raise DataError(f"{bad}: image contains NaN or Inf voxels (nothing was written)")
        loaded[cid] = (image, affine, shape)
    return loaded


def predict_files(run_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
                  device: str | None = None, progress: bool = True, engine: str = "torch",
                  overwrite: bool = False) -> list[Path]:
    """Predict every input case with a run's best weights; returns the written files.

    Every input is read and checked before anything is predicted, and the label maps are written all or nothing
    (to a hidden scratch folder in ``out_dir``, moved into place once all are complete; see
    :func:`medkd.io.staged_files`). An output never replaces an input file, and replaces an existing file only
    with ``overwrite``.

    Args:
        run_dir: a trained run folder (with ``engine="onnx"`` also an export folder or a ``.onnx`` file).
        inputs: NIfTI files or folders.
        out_dir: where ``<case>.nii.gz`` label maps go.
        device: torch device (``torch`` engine only).
        progress: show a progress bar.
        engine: ``"torch"`` or ``"onnx"`` (onnxruntime, CPU).
        overwrite: replace existing output files (never an input).

    Returns:
        The written label maps.

    Raises:
        MedkdError: a bad input (nothing is written), an output that would replace an input or an existing file,
            or a write error (names the path; nothing of this call remains).
    """
    if engine not in ENGINES:
        raise unknown_name_error("engine", engine, ENGINES)
    run_dir = Path(run_dir)
    predictor, setup, dev = (_torch_engine if engine == "torch" else _onnx_engine)(run_dir, device)
    data_cfg: DataConfig = setup["data"]
    n_channels = setup["channels"]
    label_values = setup["label_values"]
    cases = collect_inputs(inputs, n_channels)
    out_dir = Path(out_dir)
    targets = {cid: out_dir / f"{cid}.nii.gz" for cid in cases}
    _check_outputs(targets, cases, overwrite)
    loaded = _read_cases(cases, n_channels)
    with staged_files(out_dir, "medkd-predict") as stage:
        for cid, (image, affine, shape) in tqdm(loaded.items(), desc="predict", disable=not progress, leave=False):
            pc = prepare_arrays(cid, None, image, None, affine, data_cfg)
            probs = pc.restore(predict_volume(predictor, pc.image, data_cfg.dim, data_cfg.size,
                                              data_cfg.volume_size, setup["batch_size"], setup["sw_overlap"], dev))
            pred = np.asarray(label_values)[predicted_classes(probs)].astype(np.uint8).reshape(shape)
            stage.write(targets[cid], lambda tmp, pred=pred, affine=affine: write_nifti(tmp, pred, affine=affine))
    return list(targets.values())
