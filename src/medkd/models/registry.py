"""Model registry (timm style): ``@register_model`` builders, ``create_model``, ``list_models``, ``model_info``.

Example::

    from medkd.models import create_model, list_models

    list_models("unet*")                      # ['unet3d_small', 'unet_s1', 'unet_s2', 'unetplusplus']
    net = create_model("enet", in_channels=1, num_classes=2)
    net = create_model("monai.UNet", in_channels=1, num_classes=2, spatial_dims=3, channels=(8, 16, 32))

Names starting with ``monai.`` build the MONAI network of that class name (see :mod:`.monai_nets`).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medkd.errors import ConfigError
from medkd.registry import Registry, signature_options

from .monai_nets import create_monai_model, monai_model_info, monai_model_names

__all__ = ["MODEL_REGISTRY", "ModelEntry", "register_model", "create_model", "list_models", "model_info", "ROLES"]

ROLES: tuple[str, ...] = ("student", "teacher")
#: Parameters every builder receives from :func:`create_model` (not user options).
_BUILDER_ARGS = ("in_channels", "num_classes", "spatial_dims")
#: Registered zoo builders: name -> builder (metadata: ``role``, ``spatial_dims``, ``description``).
MODEL_REGISTRY: Registry[Callable[..., nn.Module]] = Registry("model", skip_options=_BUILDER_ARGS)


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder.

    Args:
        name: registry name.
        role: ``"student"`` or ``"teacher"``.
        spatial_dims: the spatial dimensions the network supports, e.g. ``(2,)`` or ``(2, 3)``.
        description: one line for ``medkd models``.
        builder: ``builder(in_channels, num_classes, [spatial_dims], **options) -> nn.Module``.
    """

    name: str
    role: str
    spatial_dims: tuple[int, ...]
    description: str
    builder: Callable[..., nn.Module]

    def options(self) -> dict[str, Any]:
        """Keyword options of the builder with their defaults (beyond in_channels / num_classes / spatial_dims)."""
        return signature_options(self.builder, _BUILDER_ARGS)


def register_model(
    name: str,
    role: str = "student",
    spatial_dims: tuple[int, ...] = (2,),
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``.

    Args:
        name: registry name (lower case, no ``monai.`` prefix).
        role: ``"student"`` or ``"teacher"``.
        spatial_dims: supported spatial dimensions.
        description: one-line description.

    Returns:
        The decorator; it returns the builder unchanged.
    """
    if role not in ROLES:
        raise ValueError(f"register_model({name!r}): role must be one of {ROLES}, got {role!r}")
    if name.startswith("monai."):
        raise ValueError(f"register_model({name!r}): the 'monai.' prefix is reserved")

    return MODEL_REGISTRY.register(name, role=role, spatial_dims=tuple(spatial_dims), description=description)


def list_models(
    pattern: str = "*",
    role: str | None = None,
    spatial_dims: int | None = None,
    include_monai: bool = False,
) -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"*unet*"``. A pattern starting with ``monai.`` lists MONAI networks.
        role: keep only ``"student"`` or ``"teacher"`` models.
        spatial_dims: keep only models supporting this many spatial dimensions.
        include_monai: also list the ``monai.*`` networks.

    Returns:
        Matching names.
    """
    # importing this module imports the medkd.models package first, which registers every zoo model
    entries = [_entry(n) for n in MODEL_REGISTRY]
    names = [
        e.name
        for e in entries
        if (role is None or e.role == role) and (spatial_dims is None or spatial_dims in e.spatial_dims)
    ]
    if include_monai or pattern.lower().startswith("monai."):
        names += monai_model_names()
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower()))


def _entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of a registered name; an unknown name raises ``ConfigError`` with the nearest."""
    builder = MODEL_REGISTRY.lookup(name)
    return ModelEntry(name=name, builder=builder, **MODEL_REGISTRY.meta(name))


def model_info(name: str) -> dict[str, Any]:
    """Describe a model: ``name``, ``role``, ``spatial_dims``, ``description``, ``options``, ``source``.

    Raises:
        ConfigError: for an unknown name (with the nearest names).
    """
    if name.startswith("monai."):
        return monai_model_info(name)
    e = _entry(name)
    return {
        "name": e.name,
        "role": e.role,
        "spatial_dims": e.spatial_dims,
        "description": e.description,
        "options": e.options(),
        "source": "medkd",
    }


def _check_positive(name: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {name!r}: {key} must be a positive integer, got {value!r}")


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model (or a MONAI network named ``monai.<ClassName>``).

    Args:
        name: registry name, see :func:`list_models`.
        in_channels: input channels.
        num_classes: output channels (logits).
        spatial_dims: 2 or 3; must be one the model supports.
        kwargs: model options (see ``model_info(name)["options"]``).

    Returns:
        The network, with ``feature_taps`` (see :func:`medkd.models.tap_specs`) and ``size_divisor``.

    Raises:
        ConfigError: unknown name (with nearest names), unsupported ``spatial_dims``, unknown option.
    """
    _check_positive(name, "in_channels", in_channels)
    _check_positive(name, "num_classes", num_classes)
    if name.startswith("monai."):
        return create_monai_model(name, in_channels, num_classes, spatial_dims, **kwargs)
    e = _entry(name)
    if spatial_dims not in e.spatial_dims:
        dims = " or ".join(str(d) for d in e.spatial_dims)
        raise ConfigError(f"model {name!r} supports spatial_dims {dims}, got spatial_dims={spatial_dims}")
    MODEL_REGISTRY.check_options(name, kwargs)
    params = inspect.signature(e.builder).parameters
    call = dict(kwargs)
    if "spatial_dims" in params:
        call["spatial_dims"] = spatial_dims
    try:
        model = e.builder(in_channels=in_channels, num_classes=num_classes, **call)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model {name!r}: {err}") from err
    model.model_name = name
    return model
