"""Named feature taps: forward hooks on dotted module paths (after torchdistill), failing loudly.

Every zoo model declares its standard taps as :class:`TapSpec` records (``encoder``, ``bottleneck``,
``decoder``, ``logits`` and, for multi-task teachers, ``reconstruction``), so that adapters can be sized
without running the network. Any other module can be tapped by its dotted path.

Example::

    from medkd.models import create_model, tap_features, FeatureTapper

    net = create_model("unet_s1", in_channels=1, num_classes=2)
    feats = tap_features(net, torch.randn(2, 1, 64, 64), taps=("encoder", "bottleneck", "logits"))

    with FeatureTapper(net, ("bottleneck", "enc2.conv")) as tapper:   # persistent hooks for a loop
        logits = net(x)
        feats = tapper.features
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medkd.errors import ConfigError, MedkdError, nearest_names

__all__ = [
    "STANDARD_TAPS",
    "TapSpec",
    "probe_tap_specs",
    "TapError",
    "FeatureTapper",
    "tap_specs",
    "set_tap_specs",
    "tap_features",
    "normalize_output",
    "valid_tap_names",
]

#: The tap names every zoo model declares (multi-task models add ``reconstruction``).
STANDARD_TAPS: tuple[str, ...] = ("encoder", "bottleneck", "decoder", "logits")

#: Keys tried, in order, when a model returns a dict.
_DICT_KEYS: tuple[str, ...] = ("logits", "seg", "segmentation", "out", "output", "pred", "masks")


class TapError(ConfigError):
    """A feature tap names no module, or its hook never fired during the forward pass."""


@dataclass(frozen=True)
class TapSpec:
    """Where a named feature lives and what it looks like.

    Args:
        path: dotted module path whose forward output is the feature (``""`` is the model itself,
            whose output is passed through :func:`normalize_output`).
        channels: number of channels of the feature map.
        reduction: stride of the feature map relative to the input (1 = full resolution).
    """

    path: str
    channels: int
    reduction: int

    def spatial_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Return the feature's spatial size for an input of spatial size ``input_size``."""
        return tuple(int(s) // self.reduction for s in input_size)


def set_tap_specs(model: nn.Module, specs: Mapping[str, TapSpec]) -> nn.Module:
    """Attach tap declarations to ``model`` (used for networks built outside the zoo); returns ``model``."""
    object.__setattr__(model, "feature_taps", dict(specs))
    return model


def tap_specs(model: nn.Module) -> dict[str, TapSpec]:
    """Return the standard taps a model declares (empty dict for a model that declares none).

    A model built from MONAI carries only the tap paths (``tap_probe``); their channels and reductions are
    measured by :func:`probe_tap_specs` on first use and cached in ``feature_taps``. For a model wrapped in
    ``DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` the paths gain the wrapper's prefix.

    Args:
        model: a network from :func:`medkd.models.create_model` (or any module with ``feature_taps``).

    Returns:
        A copy of the ``{name: TapSpec}`` mapping.
    """
    inner = _wrapped(model)
    if inner is not None:  # DataParallel / DistributedDataParallel / torch.compile wrappers
        attr, module = inner
        return {
            k: TapSpec(f"{attr}.{v.path}" if v.path else "", v.channels, v.reduction)
            for k, v in tap_specs(module).items()
        }
    specs = getattr(model, "feature_taps", None)
    if specs is None and getattr(model, "tap_probe", None) is not None:
        specs = probe_tap_specs(model, **model.tap_probe)
        set_tap_specs(model, specs)
    return dict(specs or {})


def _wrapped(model: nn.Module) -> tuple[str, nn.Module] | None:
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return "module", model.module
    orig = model.__dict__.get("_modules", {}).get("_orig_mod")
    if orig is not None:  # torch.compile's OptimizedModule
        return "_orig_mod", orig
    return None


def probe_tap_specs(
    model: nn.Module, paths: Mapping[str, str], in_channels: int, size: Sequence[int]
) -> dict[str, TapSpec]:
    """Measure channels and reduction of tap paths by one eval-mode forward pass on a zero input.

    Args:
        model: the network (its train / eval mode is restored afterwards).
        paths: ``{tap name: dotted path}`` (``""`` = the model output).
        in_channels: input channels.
        size: spatial size of the probe input, e.g. ``(32, 32)``.

    Returns:
        ``{name: TapSpec}`` in the order of ``paths``.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(1, in_channels, *size, device=device, dtype=dtype)
    was_training = model.training
    tapper = FeatureTapper(model, list(dict.fromkeys(paths.values())), _specs={})
    try:
        model.eval()
        with torch.no_grad():
            model(x)
            feats = tapper.features
    finally:
        tapper.remove()
        model.train(was_training)
    return {
        name: TapSpec(path, int(feats[path].shape[1]), max(1, round(int(size[0]) / int(feats[path].shape[2]))))
        for name, path in paths.items()
    }


def valid_tap_names(model: nn.Module) -> list[str]:
    """Standard tap names followed by every dotted module path of ``model``."""
    names = list(tap_specs(model))
    names += ["logits"] if "logits" not in names else []
    names += [n for n, _ in model.named_modules() if n]
    return names


def _unstack(out: torch.Tensor, spatial_dims: int | None) -> torch.Tensor:
    if spatial_dims is not None and out.ndim == spatial_dims + 3:
        return out[:, 0]  # (B, k, C, *spatial) deep-supervision stack: head 0 is full resolution
    return out


def normalize_output(out: Any, spatial_dims: int | None = None, select: str = "auto") -> torch.Tensor:
    """Turn any network output into the logits tensor of the full-resolution head.

    Handles a plain tensor, a list / tuple of heads, a dict, and the stacked deep-supervision tensor of
    MONAI's ``DynUNet`` in training mode, shape ``(B, k, C, *spatial)`` (recognised when ``spatial_dims``
    is given and the tensor has ``spatial_dims + 3`` dimensions; head 0 is the full-resolution one).

    Args:
        out: the network output.
        spatial_dims: number of spatial dimensions of the input, needed to recognise a stacked tensor.
        select: for a list / tuple of heads: ``"auto"`` takes the head with the largest spatial size (the
            first of equals), ``"first"``, ``"last"`` (the final head of UNet++ deep supervision) or
            ``"mean"`` (average of the full-resolution heads).

    Returns:
        A tensor of shape ``(B, C, *spatial)``.

    Raises:
        MedkdError: for an output that holds no tensor, or an unknown ``select``.
    """
    if isinstance(out, torch.Tensor):
        return _unstack(out, spatial_dims)
    if isinstance(out, Mapping):
        for key in _DICT_KEYS:
            if key in out and isinstance(out[key], torch.Tensor | list | tuple):
                return normalize_output(out[key], spatial_dims, select)
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return _unstack(tensors[0], spatial_dims)
        raise MedkdError(f"model output dict has no logits key (tried {', '.join(_DICT_KEYS)}): {list(out)}")
    if isinstance(out, list | tuple):
        heads = [normalize_output(o, spatial_dims, "first") for o in out if _has_tensor(o)]
        if not heads:
            raise MedkdError("model output is an empty list / tuple (no tensor to use as logits)")
        if select == "first":
            return heads[0]
        if select == "last":
            return heads[-1]
        sizes = [h.shape[2:].numel() for h in heads]
        best = max(sizes)
        if select == "auto":
            return heads[sizes.index(best)]
        if select == "mean":
            full = [h for h, s in zip(heads, sizes, strict=True) if s == best and h.shape == heads[0].shape]
            return torch.stack(full).mean(0)
        raise MedkdError(f"normalize_output: unknown select {select!r}; valid: auto, first, last, mean")
    raise MedkdError(f"model output of type {type(out).__name__} holds no tensor to use as logits")


def _has_tensor(o: Any) -> bool:
    if isinstance(o, torch.Tensor):
        return True
    if isinstance(o, list | tuple):
        return any(_has_tensor(i) for i in o)
    if isinstance(o, Mapping):
        return any(_has_tensor(i) for i in o.values())
    return False


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, Mapping):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _tap_error(model: nn.Module, name: str, problem: str) -> TapError:
    close = nearest_names(name, valid_tap_names(model), n=5)
    hint = f"; nearest valid names: {', '.join(repr(c) for c in close)}" if close else ""
    std = ", ".join(tap_specs(model)) or "none"
    return TapError(f"feature tap {name!r} {problem} in {type(model).__name__}{hint} (standard taps: {std})")


class FeatureTapper:
    """Persistent forward hooks that capture named features at every forward pass of ``model``.

    Names may be standard tap names (see :func:`tap_specs`) or dotted module paths; ``"logits"`` is the
    model's normalised output (:func:`normalize_output`) on every model, declared or not. Features keep their
    autograd graph (no detach): wrap the forward in ``torch.no_grad()`` where gradients are not wanted.
    If a module runs several times in one forward pass, the last output is kept.

    Args:
        model: the network to tap.
        taps: tap names or dotted module paths.

    Example::

        with FeatureTapper(student, ("encoder", "bottleneck")) as tapper:
            for x, y in loader:
                logits = student(x)
                feats = tapper.features          # {"encoder": ..., "bottleneck": ...}

    Raises:
        TapError: at construction for a name that is neither a standard tap nor a module path.
    """

    def __init__(
        self, model: nn.Module, taps: str | Iterable[str], _specs: Mapping[str, TapSpec] | None = None
    ) -> None:
        self.model = model
        self.taps: tuple[str, ...] = (taps,) if isinstance(taps, str) else tuple(taps)
        self.select: str = getattr(model, "output_select", "auto")
        modules = dict(model.named_modules())
        std = set(STANDARD_TAPS) | {"reconstruction"}
        need_specs = any(t in std or t not in modules for t in self.taps)  # else skip (MONAI nets probe)
        specs = dict(_specs) if _specs is not None else (tap_specs(model) if need_specs else {})
        self._paths: dict[str, str] = {}
        for name in self.taps:
            path = specs[name].path if name in specs else ("" if name == "logits" else name)
            if path not in modules:
                raise _tap_error(model, name, "names no module" if name not in specs else f"path {path!r} is gone")
            self._paths[name] = path
        self._store: dict[str, torch.Tensor] = {}
        self._spatial_dims: int | None = None
        self._handles: list[Any] = []
        self._handles.append(model.register_forward_pre_hook(self._reset))
        by_path: dict[str, list[str]] = {}
        for name, path in self._paths.items():
            by_path.setdefault(path, []).append(name)
        for path, names in by_path.items():
            self._handles.append(modules[path].register_forward_hook(self._make_hook(tuple(names), path == "")))

    def _reset(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._store = {}
        x = _first_tensor(args)
        self._spatial_dims = None if x is None else x.ndim - 2

    def _make_hook(self, names: tuple[str, ...], is_root: bool):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if is_root:
                value = normalize_output(output, self._spatial_dims, self.select)
            else:
                value = _first_tensor(output)
                if value is None:
                    return
            for n in names:
                self._store[n] = value

        return hook

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """Features of the latest forward pass, in the order the taps were given.

        Raises:
            TapError: naming a tap whose hook did not fire in the latest forward pass.
        """
        for name in self.taps:
            if name not in self._store:
                raise _tap_error(self.model, name, f"(module {self._paths[name]!r}) did not fire in the forward pass")
        return {name: self._store[name] for name in self.taps}

    def clear(self) -> None:
        """Drop the stored features (they hold the autograd graph of the latest forward pass)."""
        self._store = {}

    def remove(self) -> None:
        """Remove every hook and drop the stored features."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._store = {}

    def __enter__(self) -> FeatureTapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:  # hooks must not outlive a forgotten tapper
        try:
            self.remove()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def tap_features(
    model: nn.Module,
    x: torch.Tensor,
    taps: str | Iterable[str] = STANDARD_TAPS,
) -> dict[str, torch.Tensor]:
    """Run one forward pass of ``model`` on ``x`` and return the named features.

    Gradients flow through the returned tensors; the caller decides about ``torch.no_grad()``.

    Args:
        model: the network.
        x: its input, shape ``(B, C, *spatial)``.
        taps: standard tap names and / or dotted module paths.

    Returns:
        ``{name: tensor}`` in the order given; ``"logits"`` is the normalised model output.

    Raises:
        TapError: for an unknown name or a hook that never fired, naming it and the nearest valid names.
    """
    with FeatureTapper(model, taps) as tapper:
        model(x)
        return tapper.features
