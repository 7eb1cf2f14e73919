"""Any MONAI network by name: ``create_model("monai.UNet", in_channels, num_classes, spatial_dims, **kw)``.

``in_channels`` / ``num_classes`` / ``spatial_dims`` map to MONAI's ``in_channels`` / ``out_channels`` /
``spatial_dims``; other keyword arguments pass through unchanged (an unknown one is a ``ConfigError``).
Required MONAI arguments get defaults where an expert would expect them:

* ``UNet`` / ``AttentionUnet``: ``channels=(16, 32, 64, 128, 256)``, ``strides`` = 2 per level
  (``UNet`` also ``num_res_units=2``);
* ``DynUNet``: ``strides=[1, 2, 2, 2, 2]`` (or the given ``strides``), ``kernel_size`` = 3 per stage,
  ``upsample_kernel_size = strides[1:]``;
* ``UNETR``: ``img_size=96`` per axis (it only accepts that size);
* ``FlexibleUNet``: ``backbone="efficientnet-b0"``, never pretrained.

Standard taps (``encoder``, ``bottleneck``, ``decoder``, ``logits``) are declared by module path for
``UNet``, ``BasicUNet``, ``BasicUNetPlusPlus``, ``DynUNet``, ``SegResNet`` and ``VNet``; their channels and
reductions are measured once, lazily, by a forward pass in eval mode on a small zero input. Other networks
get ``logits`` only; any module is reachable by its dotted path.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medkd.errors import ConfigError, unknown_name_error

from .layers import check_input

__all__ = ["MONAI_SEGMENTATION_NETS", "create_monai_model", "monai_model_names", "monai_model_info"]

#: MONAI networks listed by ``list_models(include_monai=True)`` (any other class name also builds).
MONAI_SEGMENTATION_NETS: tuple[str, ...] = (
    "AttentionUnet",
    "BasicUNet",
    "BasicUNetPlusPlus",
    "DynUNet",
    "FlexibleUNet",
    "SegResNet",
    "SwinUNETR",
    "UNETR",
    "UNet",
    "VNet",
)


def _nets():
    import monai.networks.nets as nets  # lazy: keeps `import medkd.models` free of monai (~2.5 s)

    return nets


def _all_monai_classes() -> list[str]:
    nets = _nets()
    return sorted(
        n
        for n in dir(nets)
        if not n.startswith("_") and isinstance(getattr(nets, n), type) and issubclass(getattr(nets, n), nn.Module)
    )


def monai_model_names() -> list[str]:
    """The curated ``monai.*`` segmentation networks (``create_model`` accepts any MONAI network class)."""
    return [f"monai.{n}" for n in MONAI_SEGMENTATION_NETS]


def _cls(name: str) -> type[nn.Module]:
    short = name.split(".", 1)[1]
    nets = _nets()
    obj = getattr(nets, short, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise unknown_name_error("model", name, [f"monai.{n}" for n in _all_monai_classes()])
    return obj


def monai_model_info(name: str) -> dict[str, Any]:
    """Describe ``monai.<Class>``: role ``"any"``, spatial dims, the first docstring line, its options."""
    cls = _cls(name)
    params = inspect.signature(cls).parameters
    skip = {"self", "in_channels", "out_channels", "spatial_dims", "dimensions"}
    options = {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    doc = (inspect.getdoc(cls) or "").strip().splitlines()
    return {
        "name": name,
        "role": "any",
        "spatial_dims": (2, 3),
        "description": f"MONAI {cls.__name__}" + (f": {doc[0]}" if doc else ""),
        "options": options,
        "source": "monai",
    }


def _needs_einops(short: str) -> bool:
    """MONAI's transformer networks import einops lazily (some only in ``forward``)."""
    return any(k in short for k in ("UNETR", "ViT", "Swin", "Transformer", "TransChex"))


def _seq_prod(strides: Sequence[Any]) -> int:
    per_axis: list[int] = []
    for s in strides:
        if isinstance(s, Sequence):
            per_axis = [a * int(b) for a, b in zip(per_axis or [1] * len(s), s, strict=True)]
        else:
            per_axis = [a * int(s) for a in (per_axis or [1])]
    return max(per_axis or [1])


def _defaults(short: str, dims: int, kw: dict[str, Any]) -> dict[str, Any]:
    """Defaults for required / sensible arguments, given the user's kwargs."""
    d: dict[str, Any] = {}
    if short in ("UNet", "AttentionUnet"):
        channels = kw.get("channels", (16, 32, 64, 128, 256))
        d["channels"] = channels
        d["strides"] = (2,) * (len(channels) - 1)
        if short == "UNet":
            d["num_res_units"] = 2
    elif short == "DynUNet":
        strides = kw.get("strides", [1, 2, 2, 2, 2])
        d["strides"] = strides
        d["kernel_size"] = [3] * len(strides)
        d["upsample_kernel_size"] = list(strides[1:])
    elif short == "UNETR":
        d["img_size"] = (96,) * dims
    elif short == "FlexibleUNet":
        d["backbone"] = "efficientnet-b0"
        d["pretrained"] = False
    return d


def _size_divisor(short: str, net: nn.Module, args: dict[str, Any]) -> int:
    if short in ("UNet", "AttentionUnet"):
        return _seq_prod(list(args["strides"])[: len(args["channels"]) - 1])
    if short == "DynUNet":
        return _seq_prod(args["strides"])
    if short in ("BasicUNet", "BasicUNetPlusPlus", "VNet", "UNETR", "FlexibleUNet"):
        return 16 if short != "FlexibleUNet" else 32
    if short == "SwinUNETR":
        return 32
    if short == "SegResNet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    return 1


def _tap_paths(short: str, net: nn.Module, args: dict[str, Any]) -> dict[str, str]:
    """Dotted paths of the standard taps of known MONAI networks."""
    names = {n for n, _ in net.named_modules()}
    paths: dict[str, str] = {}
    if short == "UNet":
        levels = len(args["channels"])
        down = ["model" + ".1.submodule" * k + ".0" for k in range(levels - 1)]
        paths = {
            "encoder": down[min(1, len(down) - 1)],
            "bottleneck": "model" + ".1.submodule" * (levels - 1),
            "decoder": "model.1",
        }
    elif short == "BasicUNet":
        paths = {"encoder": "down_2", "bottleneck": "down_4", "decoder": "upcat_1"}
    elif short == "BasicUNetPlusPlus":
        paths = {"encoder": "conv_2_0", "bottleneck": "conv_4_0", "decoder": "upcat_0_4"}
    elif short == "DynUNet":
        n_down = len(net.downsamples)
        paths = {
            "encoder": f"downsamples.{n_down // 2}" if n_down else "input_block",
            "bottleneck": "bottleneck",
            "decoder": f"upsamples.{len(net.upsamples) - 1}",
        }
    elif short == "SegResNet":
        n_down = len(net.down_layers)
        paths = {
            "encoder": f"down_layers.{n_down // 2 - 1 if n_down > 1 else 0}",
            "bottleneck": f"down_layers.{n_down - 1}",
            "decoder": f"up_layers.{len(net.up_layers) - 1}",
        }
    elif short == "VNet":
        paths = {"encoder": "down_tr64", "bottleneck": "down_tr256", "decoder": "up_tr32"}
    paths = {k: v for k, v in paths.items() if v in names}
    paths["logits"] = ""
    return paths


class _InputCheck:
    """Forward pre-hook rejecting inputs whose size is not a multiple of the network's divisor."""

    def __init__(self, name: str, spatial_dims: int, divisor: int) -> None:
        self.name, self.spatial_dims, self.divisor = name, spatial_dims, divisor

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            check_input(args[0], self.spatial_dims, self.divisor, self.name)


def create_monai_model(
    name: str, in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs: Any
) -> nn.Module:
    """Build ``monai.<ClassName>`` (see module docstring).

    Raises:
        ConfigError: unknown class (nearest names), unknown or missing argument, missing optional package.
    """
    cls = _cls(name)
    short = cls.__name__
    params = inspect.signature(cls).parameters
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    mapped = {"in_channels": in_channels, "out_channels": num_classes}
    if "spatial_dims" in params:
        mapped["spatial_dims"] = spatial_dims
    elif "dimensions" in params:
        mapped["dimensions"] = spatial_dims
    elif spatial_dims != 2:
        raise ConfigError(f"model {name!r} takes no spatial_dims argument; use spatial_dims=2")
    for key in kwargs:
        if key in mapped or key in ("out_channels", "spatial_dims", "dimensions"):
            raise ConfigError(
                f"model {name!r}: pass {key!r} through create_model's in_channels / num_classes / "
                "spatial_dims, not as an option"
            )
        if key not in params and not has_var_kw:
            valid = [k for k in params if k not in mapped]
            raise unknown_name_error(f"option for model {name!r}:", key, valid)
    args = {**_defaults(short, spatial_dims, kwargs), **kwargs, **mapped}
    args = {k: v for k, v in args.items() if k in params or has_var_kw}
    missing = [
        k
        for k, p in params.items()
        if p.default is inspect.Parameter.empty and k not in args and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        raise ConfigError(f"model {name!r} needs option(s) {', '.join(repr(m) for m in missing)}")
    if _needs_einops(short) and importlib.util.find_spec("einops") is None:
        raise ConfigError(f"model {name!r} needs the optional package einops, which is not installed")
    try:
        net = cls(**args)
    except ImportError as err:
        first = str(err.msg or err).splitlines()[0]
        raise ConfigError(f"model {name!r} needs an optional package that is not installed: {first}") from err
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"model {name!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    divisor = _size_divisor(short, net, args)
    net.register_forward_pre_hook(_InputCheck(name, spatial_dims, divisor))
    if short == "UNETR":
        size = tuple(args["img_size"]) if isinstance(args["img_size"], Sequence) else (args["img_size"],) * spatial_dims
    else:
        size = (max(2 * divisor, 32),) * spatial_dims
    probe = {"paths": _tap_paths(short, net, args), "in_channels": in_channels, "size": size}
    object.__setattr__(net, "tap_probe", probe)  # tap_specs() measures the taps on first use
    object.__setattr__(net, "size_divisor", divisor)
    object.__setattr__(net, "model_name", name)
    if short == "BasicUNetPlusPlus":
        object.__setattr__(net, "output_select", "last")
    return net
