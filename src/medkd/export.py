"""Export a trained student for deployment: ONNX (run with onnxruntime on a CPU) or TorchScript.

The exported graph takes the normalised image ``(B, C, *spatial)`` and returns the logits tensor of the
full-resolution head (list / tuple / dict outputs go through :func:`medkd.models.normalize_output`).

ONNX files are written with PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
the dynamo exporter needs the ``onnxscript`` package, which medkd does not require, while the TorchScript-based
one works offline for every zoo student (ENet, ESPNet, ERFNet, the small U-Nets, MONAI's UNet) and teacher.
``nn.PReLU`` layers are exported as ``LeakyRelu`` with the learned slope when they have a single one, else as
``relu(x) - a * relu(-x)``: the same values, but onnxruntime's ``PRelu`` kernel is slow on CPUs and breaks its
blocked-layout convolution chains, while it fuses ``LeakyRelu`` into the preceding convolution.
Batch and spatial axes are exported as dynamic; each export is checked with onnxruntime against PyTorch on the
example and on a probe of another batch and spatial size, and falls back to a dynamic batch only, then to a fixed
shape, for networks whose graph bakes in the input size (e.g. a ViT with fixed position embeddings).

:func:`export_run` exports the network of a run folder alone (``checkpoints/best.safetensors``; distillation
adapters and projection heads live in the separate extras file and are never part of it) and writes a JSON
sidecar beside the file (``model.onnx.json``) holding what :mod:`medkd.predict` needs to run it without the
PyTorch weights: input name and shape, classes and label values, channels, preprocessing, ``data.size``, ``dim``,
and how far the run's training got (``epoch`` of the exported weights, ``last_epoch``, ``finished``). The file and
its sidecar are written all or nothing: a write error leaves the previous export as it was.

Running an export is :mod:`medkd.onnx_runtime`'s job (:class:`~medkd.onnx_runtime.OnnxPredictor`, re-exported
here); this module only writes exports.

Example::

    from medkd.export import OnnxPredictor, export_run

    path = export_run("runs/distilled")            # runs/distilled/export/model.onnx (+ model.onnx.json)
    logits = OnnxPredictor(path)(torch.randn(1, 1, 96, 96))
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medkd
from medkd.config import RunConfig
from medkd.errors import ConfigError, MedkdError, unknown_name_error
from medkd.io import atomic_write, atomic_write_bytes, staged_files
from medkd.models import normalize_output
from medkd.onnx_runtime import OnnxPredictor, onnx_session
from medkd.run import RunFolder

__all__ = [
    "EXPORT_FORMATS",
    "LogitsModel",
    "OnnxPredictor",
    "export_onnx",
    "export_onnx_result",
    "export_run",
    "export_torchscript",
    "file_sha256",
    "read_export_info",
    "resolve_onnx_export",
    "sidecar_path",
    "unfinished_warning",
]

#: ``medkd export --format`` values and the file name each writes inside ``RUN/export/``.
EXPORT_FORMATS: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.ts"}

_INPUT, _OUTPUT = "image", "logits"
_EXPORTER = "torch.onnx.export(dynamo=False), the TorchScript-based exporter"


class LogitsModel(nn.Module):
    """Wrap a network so that its forward returns the normalised logits tensor (what export traces).

    The output goes through :func:`medkd.models.normalize_output` exactly as in :func:`medkd.inference.predict_volume`
    (a list / tuple of heads gives the full-resolution one), so exported and PyTorch predictions agree.

    Args:
        net: the network.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_output(self.net(x))


class _DecomposedPReLU(nn.Module):
    """``PReLU`` as ``relu(x) - a * relu(-x)``: the same values, but plain Relu / Mul / Sub nodes in ONNX.

    onnxruntime's CPU ``PRelu`` kernel with a per-channel slope is slow and breaks its blocked-layout convolution
    chains (ENet at 256 x 256 spends about half its time there), so ONNX export rewrites every ``nn.PReLU``.
    """

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight
        if a.numel() > 1:
            a = a.reshape(1, -1, *([1] * (x.ndim - 2)))
        return torch.relu(x) - a * torch.relu(-x)


def _prelu_for_onnx(prelu: nn.PReLU) -> nn.Module:
    """``nn.LeakyReLU`` with the learned slope for a single-slope PReLU (the same function at inference: onnxruntime
    fuses it into the preceding Conv), :class:`_DecomposedPReLU` for a per-channel one."""
    if prelu.weight.numel() == 1:
        return nn.LeakyReLU(float(prelu.weight.detach()))
    return _DecomposedPReLU(prelu)


def _onnx_friendly(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every ``nn.PReLU`` replaced by :func:`_prelu_for_onnx` (``net`` if it has none)."""
    if not any(isinstance(m, nn.PReLU) for m in net.modules()):
        return net
    clone = copy.deepcopy(net)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                setattr(parent, name, _prelu_for_onnx(child))
    return clone


def _inner(model: nn.Module) -> nn.Module:
    """The network inside DataParallel / DDP / torch.compile wrappers."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    inner = model.__dict__.get("_modules", {}).get("_orig_mod")
    return model if inner is None else inner


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        # No torch.no_grad around the export: it switches nn.MultiheadAttention to a fused op that ONNX cannot
        # express. Warnings are silenced: the TorchScript-based exporter and torch.jit say they are deprecated,
        # and the tracer warns about Python-side shape checks; every export is verified numerically instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield model
    finally:
        model.train(was_training)


def _example(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    if not isinstance(example, torch.Tensor) or example.ndim not in (4, 5):
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise ConfigError(f"export example must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return example.detach().to(device=device, dtype=torch.float32)


def _probe(model: nn.Module, example: torch.Tensor, spatial: bool = True) -> torch.Tensor:
    """An input of another batch size and (``spatial``) other sizes, still multiples of the model's divisor."""
    divisor = max(1, int(getattr(model, "size_divisor", 1) or 1))
    step = divisor * math.ceil(8 / divisor) if spatial else 0
    sizes = [int(s) + step * (i + 1) for i, s in enumerate(example.shape[2:])]
    gen = torch.Generator().manual_seed(1)
    return torch.randn(int(example.shape[0]) + 1, int(example.shape[1]), *sizes, generator=gen).to(example.device)


def _run(fn: Any, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return fn(x).float().cpu().numpy()


def _close(got: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    """Whether ``got`` matches ``ref`` (max abs diff <= 1e-4 x max(1, max |ref|)) and the max abs diff."""
    if got.shape != ref.shape:
        return False, math.inf
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    return diff <= 1e-4 * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0), diff


def _onnx_bytes(wrapper: nn.Module, example: torch.Tensor, opset: int, axes: dict[str, dict[int, str]],
                path: Path) -> bytes:
    buffer = io.BytesIO()
    try:
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset, input_names=[_INPUT],
                          output_names=[_OUTPUT], dynamic_axes=axes or None, do_constant_folding=True)
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as err:
        name = getattr(wrapper.net, "model_name", type(wrapper.net).__name__)
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise MedkdError(f"{path}: the ONNX exporter cannot convert {name} ({first})") from None
    return buffer.getvalue()


def _axes(mode: str, spatial_dims: int) -> dict[str, dict[int, str]]:
    names = {0: "batch"}
    if mode == "batch+spatial":
        names.update({2 + i: n for i, n in enumerate(("depth", "height", "width")[3 - spatial_dims:])})
    if mode == "static":
        return {}
    return {_INPUT: dict(names), _OUTPUT: dict(names)}


def export_onnx_result(model: nn.Module, path: str | Path, example: torch.Tensor, opset: int = 17,
                       dynamic: bool | None = None, check: bool = True) -> dict[str, Any]:
    """:func:`export_onnx`, returning what was exported instead of the path.

    Returns:
        ``{"dynamic": "batch+spatial" | "batch" | "static", "input_shape", "example_shape", "max_abs_diff"
        (None without ``check``), "opset"}``.
    """
    path = Path(path)
    data, result = _onnx_export_bytes(model, path, example, opset, dynamic, check)
    atomic_write_bytes(path, data)
    return result


def _onnx_export_bytes(model: nn.Module, path: Path, example: torch.Tensor, opset: int = 17,
                       dynamic: bool | None = None, check: bool = True) -> tuple[bytes, dict[str, Any]]:
    """Export and verify; returns the ONNX file's bytes and what was exported (dynamic axes, max abs diff, shapes).

    ``path`` is the file the bytes are meant for (named in error messages); nothing is written here."""
    if opset < 17:
        raise ConfigError(f"opset {opset}: medkd exports ONNX opset 17 or newer")
    net = _inner(model)
    x = _example(net, example)
    spatial_dims = x.ndim - 2
    wrapper = LogitsModel(net)
    exported = LogitsModel(_onnx_friendly(net))
    modes = {None: ["batch+spatial", "batch", "static"], True: ["batch+spatial"], False: ["static"]}[dynamic]
    with _eval_mode(net):
        wrapper.eval()
        exported.eval()
        ref = _run(wrapper, x)
        failures: list[str] = []
        for mode in modes:
            data = _onnx_bytes(exported, x, opset, _axes(mode, spatial_dims), path)
            if not check:
                return data, _onnx_result(mode, spatial_dims, x, None, opset)
            session = onnx_session(data)
            ok, diff = _close(session.run(None, {_INPUT: x.cpu().numpy()})[0], ref)
            if not ok:
                raise MedkdError(f"{path}: ONNX output differs from PyTorch by {diff:.3g} on the example input; "
                                 "the network has an operation the exporter cannot reproduce")
            if mode != "static":
                probe = _probe(net, x, spatial=mode == "batch+spatial")
                try:
                    ok, _ = _close(session.run(None, {_INPUT: probe.cpu().numpy()})[0], _run(wrapper, probe))
                except Exception as err:  # onnxruntime raises its own error types for shape mismatches
                    ok = False
                    failures.append(f"{mode}: {str(err).splitlines()[0][:120]}")
                if not ok:
                    continue
            return data, _onnx_result(mode, spatial_dims, x, diff, opset)
    raise MedkdError(f"{path}: no ONNX export of this network runs at another input size "
                     f"({'; '.join(failures) or 'outputs differ'}); export with dynamic=False")


def _onnx_result(mode: str, spatial_dims: int, x: torch.Tensor, diff: float | None, opset: int) -> dict[str, Any]:
    axes = _axes(mode, spatial_dims).get(_INPUT, {})
    shape = [axes.get(i, int(s)) for i, s in enumerate(x.shape)]
    return {"dynamic": mode, "input_shape": shape, "example_shape": list(x.shape), "max_abs_diff": diff,
            "opset": opset}


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, opset: int = 17,
                dynamic: bool | None = None, check: bool = True) -> Path:
    """Export ``model`` (eval mode) to an ONNX file whose output is the normalised logits tensor.

    Args:
        model: the network (its train / eval mode is restored afterwards).
        path: the ``.onnx`` file to write (atomically; its folder is created).
        example: an input tensor ``(B, C, *spatial)`` used for tracing and checking.
        opset: ONNX opset, 17 or newer.
        dynamic: ``None`` tries dynamic batch + spatial axes, then batch only, then a fixed shape, keeping the
            first that onnxruntime reproduces at another size; ``True`` / ``False`` force dynamic / fixed axes.
        check: compare onnxruntime with PyTorch (needs onnxruntime); ``False`` writes the first export as is.

    Returns:
        The written path.

    Raises:
        MedkdError: the ONNX graph does not reproduce PyTorch's logits, or onnxruntime is missing.
    """
    path = Path(path)
    export_onnx_result(model, path, example, opset, dynamic, check)
    return path


def _export_torchscript(model: nn.Module, path: Path,
                        example: torch.Tensor) -> tuple[Callable[[Path], None], dict[str, Any]]:
    """Trace and verify; returns a writer of the TorchScript file and what was exported."""
    net = _inner(model)
    x = _example(net, example)
    wrapper = LogitsModel(net)
    with _eval_mode(net):
        wrapper.eval()
        traced = torch.jit.trace(wrapper, (x,), check_trace=False)
        ok, diff = _close(_run(traced, x), _run(wrapper, x))
        if not ok:
            raise MedkdError(f"{path}: TorchScript output differs from PyTorch by {diff:.3g} on the example input")
        probe = _probe(net, x)
        try:
            dynamic, _ = _close(_run(traced, probe), _run(wrapper, probe))
        except Exception:  # a traced graph with the example's sizes baked in
            dynamic = False

    def save(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, str(tmp))

    return save, {"dynamic": "batch+spatial" if dynamic else "static", "example_shape": list(x.shape),
                  "max_abs_diff": diff}


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace ``model`` (eval mode) to a TorchScript file whose output is the normalised logits tensor.

    Args:
        model: the network (its train / eval mode is restored afterwards).
        path: the file to write (atomically); load it with ``torch.jit.load``.
        example: an input tensor ``(B, C, *spatial)`` used for tracing and checking.

    Returns:
        The written path.

    Raises:
        MedkdError: the traced module does not reproduce the network's logits on ``example``.
    """
    path = Path(path)
    save, _ = _export_torchscript(model, path, example)
    atomic_write(path, save)
    return path


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar written beside an exported file (``model.onnx`` -> ``model.onnx.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (used to tell whether an export is older than the run's best weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unfinished_warning(run_dir: str | Path, progress: dict[str, Any], doing: str = "exporting") -> str | None:
    """A one-line warning for an unfinished run, None for a finished one.

    ``progress``: :func:`medkd.run.training_progress` of the run (or an export sidecar's copy).
    """
    if progress.get("finished", True):  # finished, or a sidecar written before medkd recorded it
        return None
    done = "no" if progress.get("last_epoch") is None else progress["last_epoch"]
    best = "" if progress.get("epoch") is None else f" (epoch {progress['epoch']})"
    return (f"warning: {run_dir}: training has not finished ({done} of {progress.get('epochs')} epochs); "
            f"{doing} the best weights so far{best}")


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int = 17) -> Path:
    """Export the student network of a run folder from ``checkpoints/best.safetensors``.

    Only the network is exported (distillation adapters and heads are in the separate extras file). The
    example input is ``(1, in_channels, *data.size)`` of the run; a JSON sidecar ``<file>.json`` records the
    input name and shape, classes, label values, channels, preprocessing, ``data.size``, ``dim``, versions and
    how far training got (:func:`medkd.run.training_progress`: ``epoch`` of the weights,
    ``last_epoch``, ``epochs``, ``finished``; an unfinished run exports too, and ``medkd export`` warns).
    The file and its sidecar are written together or not at all (:func:`medkd.io.staged_files`).

    Args:
        run_dir: a trained run folder.
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file (or a folder for it) to write; default ``RUN/export/model.onnx`` / ``model.ts``.
        opset: ONNX opset (17 or newer).

    Returns:
        The exported file.

    Raises:
        MedkdError: not a run folder, no best checkpoint, unknown format, an export that does not match, a file
            in the way that is not a medkd export, or a write error (names the path; nothing is left behind).
    """
    if fmt not in EXPORT_FORMATS:
        raise unknown_name_error("export format", fmt, list(EXPORT_FORMATS))
    run = RunFolder(run_dir)
    model, cfg = run.load_model("best")
    path = _export_path(run, fmt, out)
    example = torch.randn(1, run.in_channels, *cfg.data.size, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        data, result = _onnx_export_bytes(model, path, example, opset=opset)

        def save(tmp: Path) -> None:
            tmp.write_bytes(data)
    else:
        save, result = _export_torchscript(model, path, example)
        result["input_shape"] = ([1 if result["dynamic"] == "static" else "batch", run.in_channels]
                                 + ([int(s) for s in cfg.data.size] if result["dynamic"] == "static"
                                    else list(("depth", "height", "width")[3 - cfg.data.dim:])))
    text = json.dumps(_sidecar(run, cfg, model, fmt, path, result), indent=2) + "\n"
    with staged_files(path.parent, "medkd-export") as stage:
        stage.write(path, save)
        stage.write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    return path


def _export_path(run: RunFolder, fmt: str, out: str | Path | None) -> Path:
    """The file :func:`export_run` writes: ``RUN/export/<file>`` by default, else ``out`` (or a file in it).

    Raises:
        MedkdError: ``out`` names a file that is not a medkd export (no sidecar beside it).
    """
    if out is None:
        return run.path / "export" / EXPORT_FORMATS[fmt]
    path = Path(out)
    if path.is_dir() or not path.suffix:
        path = path / EXPORT_FORMATS[fmt]
    side = sidecar_path(path)
    if (path.exists() or path.is_symlink()) and not side.is_file():
        raise MedkdError(f"{path}: file exists and is not a medkd export (no {side.name} beside it); "
                         "choose another --out")
    return path


def _sidecar(run: RunFolder, cfg: RunConfig, model: nn.Module, fmt: str, path: Path,
             result: dict[str, Any]) -> dict[str, Any]:
    """What an export's JSON sidecar records (see :func:`export_run`)."""
    split = run.split()
    return {
        "format": fmt,
        "file": path.name,
        "input_name": _INPUT,
        "output_name": _OUTPUT,
        **result,
        "exporter": _EXPORTER if fmt == "onnx" else "torch.jit.trace",
        "model": cfg.model.name,
        "model_kwargs": cfg.model.kwargs,
        "dim": cfg.data.dim,
        "size": list(cfg.data.size),
        "size_divisor": int(getattr(model, "size_divisor", 1) or 1),
        "in_channels": run.in_channels,
        "channels": list(split["channels"]),
        "neighbours": int(split.get("neighbours", cfg.data.neighbours)),
        "classes": list(split["classes"]),
        "label_values": run.label_values(cfg),
        "normalize": cfg.data.normalize,
        "data": cfg.data.model_dump(mode="json"),
        "evaluate": {"batch_size": cfg.evaluate.batch_size, "sw_overlap": cfg.evaluate.sw_overlap},
        "run": cfg.name,
        "checkpoint": run.best_weights.relative_to(run.path).as_posix(),
        "checkpoint_sha256": file_sha256(run.best_weights),
        **run.progress(cfg.train.epochs),
        "medkd_version": medkd.__version__,
        "torch_version": torch.__version__,
    }


def read_export_info(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported file.

    Raises:
        MedkdError: the sidecar is missing or unreadable.
    """
    side = sidecar_path(path)
    if not side.is_file():
        raise MedkdError(f"{side}: export sidecar missing; export again with `medkd export RUN_DIR`")
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MedkdError(f"{side}: unreadable export sidecar ({err.__class__.__name__})") from None


def resolve_onnx_export(target: str | Path, export: bool = True) -> tuple[Path, dict[str, Any], bool]:
    """Find (or make) the ONNX export of a run folder, an export folder or a ``.onnx`` file.

    For a run folder, ``RUN/export/model.onnx`` is (re-)exported when it is missing or older than the run's
    best weights (their SHA-256 differs from the sidecar's) and ``export`` is true.

    Args:
        target: a run folder, a folder holding ``model.onnx`` + ``model.onnx.json``, or the ``.onnx`` file.
        export: allow exporting a run that has no (current) export.

    Returns:
        ``(onnx path, sidecar dict, whether it was exported now)``.

    Raises:
        MedkdError: nothing exportable or exported at ``target``.
    """
    target = Path(target)
    if target.is_file():
        if target.suffix != ".onnx":
            raise MedkdError(f"{target}: not an .onnx file, a run folder or an export folder")
        return target, read_export_info(target), False
    if not target.is_dir():
        raise MedkdError(f"{target}: no such run folder or ONNX export")
    run = RunFolder(target)
    if run.is_run():
        path = _export_path(run, "onnx", None)
        weights = run.best_weights
        current = path.is_file() and sidecar_path(path).is_file()
        if current and weights.is_file():
            current = read_export_info(path).get("checkpoint_sha256") == file_sha256(weights)
        if not current:
            if not export:
                raise MedkdError(f"{target}: no current ONNX export; run `medkd export {target}` first")
            return export_run(target, "onnx"), read_export_info(path), True
        return path, read_export_info(path), False
    path = target / EXPORT_FORMATS["onnx"]
    if not path.is_file():
        raise MedkdError(f"{target}: neither a run folder ({run.config_path.name}) nor an export folder "
                         f"({path.name})")
    return path, read_export_info(path), False
