"""Simulated acquisition sites: per-site intensity, noise, blur and resolution changes for any image.

A :class:`SiteProfile` fixes what a scanner / protocol does to an image; :func:`apply_site` applies it to one
2D or 3D numpy image, drawing only the per-case part (a smooth multiplicative bias field and the noise) from the
given random generator. The same code makes the synthetic dataset's sites and simulates sites from one real
dataset (results on such data must be reported as *simulated* sites).

The steps, in the order a scanner would cause them (intensities first mapped to ``[0, 1]`` by ``value_range``
(default: the image's minimum and 99.5th percentile), and mapped back to the original units at the end):

1. tissue contrast curve ``u ** gamma`` (a protocol's TE/TR/TI choice changes relative tissue contrast);
2. coil bias field: ``u * exp(bias_strength * b)``, ``b`` a smooth zero-mean, unit-std random field whose
   correlation length is ``bias_smoothness`` times the image extent (new per case);
3. resolution: downsampled by ``resolution`` (area-averaging blur, then linear resampling) and linearly
   resampled back to the original grid;
4. point-spread blur: Gaussian with ``blur_sigma`` pixels;
5. noise of standard deviation ``noise_std`` (in ``[0, 1]`` units): ``"rician"`` (magnitude MR images,
   ``sqrt((u + n1)^2 + n2^2)``, the default) or ``"gaussian"`` (``u + n1``);
6. scanner scaling ``contrast * u + offset``.

Only axes longer than one voxel are blurred / resampled, so an (H, W, 1) slice stays 2D. ``resolution`` and
``blur_sigma`` are in units of the image's finest voxel; given the voxel ``spacing``, each axis gets them in its own
voxels (``sigma * finest / spacing``, resolution ``max(1, resolution * finest / spacing)``), so an axis already
coarser than the site's acquisition voxel, such as the 10 mm slice axis of a cine MR stack acquired slice by slice,
is neither blurred nor resampled: its slices are never mixed. ``in_plane=True`` does the same for every axis after
the first two whatever the spacing says (a stack whose spacing was lost, such as ``../shared``'s ACDC at 1 mm).

Example:
    >>> import numpy as np
    >>> profiles = make_site_profiles(3, seed=0)
    >>> out = apply_site(np.random.rand(64, 64), profiles[0], np.random.default_rng(0))
    >>> out.shape, out.dtype
    ((64, 64), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from medkd.errors import ConfigError

__all__ = ["NOISE_TYPES", "SiteProfile", "apply_site", "axis_scales", "make_site_profiles", "random_bias_field"]

NOISE_TYPES = ("rician", "gaussian")

# Parameter ranges that make_site_profiles spreads its sites over (low, high, log-spaced).
_RANGES: dict[str, tuple[float, float, bool]] = {
    "gamma": (0.65, 1.6, True),
    "noise_std": (0.012, 0.055, True),
    "bias_strength": (0.05, 0.3, False),
    "bias_smoothness": (0.35, 0.75, False),
    "blur_sigma": (0.0, 1.1, False),
    "resolution": (1.0, 2.0, False),
    "contrast": (0.7, 1.4, True),
    "offset": (-0.04, 0.08, False),
}


@dataclass(frozen=True)
class SiteProfile:
    """What one simulated acquisition site does to an image (see the module docstring for the steps).

    Args:
        name: site name, used in ``sites.json`` and per-site reports.
        bias_strength: std of the log bias field (0 = none; 0.3 gives roughly x0.6..x1.6 across the image).
        bias_smoothness: correlation length of the bias field as a fraction of the image extent (0, 1].
        gamma: exponent of the intensity curve applied to ``[0, 1]`` intensities (1 = unchanged).
        contrast: final linear scale.
        offset: final additive offset, in ``[0, 1]`` units.
        noise_std: noise standard deviation in ``[0, 1]`` units.
        noise_type: ``"rician"`` (default, magnitude MR) or ``"gaussian"``.
        blur_sigma: Gaussian point-spread sigma in pixels (0 = none).
        resolution: acquisition voxel size relative to the grid (1 = full resolution, 2 = half).
    """

    name: str
    bias_strength: float = 0.0
    bias_smoothness: float = 0.5
    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise_std: float = 0.0
    noise_type: str = "rician"
    blur_sigma: float = 0.0
    resolution: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_type not in NOISE_TYPES:
            raise ConfigError(f"site {self.name!r}: noise_type must be one of {NOISE_TYPES}, got {self.noise_type!r}")
        checks = {
            "bias_strength": self.bias_strength >= 0,
            "bias_smoothness": 0 < self.bias_smoothness <= 1,
            "gamma": self.gamma > 0,
            "contrast": self.contrast > 0,
            "noise_std": self.noise_std >= 0,
            "blur_sigma": self.blur_sigma >= 0,
            "resolution": self.resolution >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"site {self.name!r}: invalid {key}={getattr(self, key)!r}")

    def to_dict(self) -> dict:
        """Return the profile as a JSON-ready dict (recorded in ``sites.json`` and run folders)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SiteProfile:
        """Build a profile from :meth:`to_dict` output; unknown keys are a :class:`ConfigError`."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"site profile: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(**data)


def make_site_profiles(k: int, seed: int = 0) -> list[SiteProfile]:
    """Make ``k`` clearly different, deterministic site profiles named ``site1`` .. ``siteK``.

    Each parameter takes ``k`` evenly spaced values over its range (log-spaced for multiplicative ones),
    jittered by a small fraction of the spacing and shuffled independently per parameter, so any two sites
    differ in every parameter by about ``1/k`` of its range or more.

    Args:
        k: number of sites (>= 1). ``k == 1`` gives one mid-range site.
        seed: random seed; the same ``(k, seed)`` always gives the same profiles.

    Returns:
        The list of profiles.
    """
    if int(k) != k or k < 1:
        raise ConfigError(f"sites: need a positive integer number of sites, got {k!r}")
    k = int(k)
    rng = np.random.default_rng([int(seed), k, 7919])
    quantiles = (np.arange(k) + 0.5) / k
    values: dict[str, np.ndarray] = {}
    for key, (lo, hi, log) in _RANGES.items():
        q = rng.permutation(quantiles) + rng.uniform(-0.15, 0.15, size=k) / k
        q = np.clip(q, 0.0, 1.0)
        if log:
            values[key] = np.exp(math.log(lo) + q * (math.log(hi) - math.log(lo)))
        else:
            values[key] = lo + q * (hi - lo)
    return [
        SiteProfile(name=f"site{i + 1}", **{key: round(float(v[i]), 4) for key, v in values.items()}) for i in range(k)
    ]


def _spatial_axes(shape: Sequence[int]) -> list[int]:
    return [ax for ax, n in enumerate(shape) if n > 1]


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    factors = [t / s for t, s in zip(shape, array.shape)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # guard against rounding in zoom's output shape
        out = out[tuple(slice(0, n) for n in shape)]
        out = np.pad(out, [(0, t - s) for t, s in zip(shape, out.shape)], mode="edge")
    return out


def random_bias_field(shape: Sequence[int], profile: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Draw a smooth multiplicative bias field ``exp(bias_strength * b)`` for an image of ``shape``.

    Args:
        shape: image shape (2D or 3D; singleton axes stay constant).
        profile: gives the strength and smoothness.
        rng: source of the random control points.

    Returns:
        A float64 field of ``shape`` with geometric mean close to 1.
    """
    shape = tuple(int(n) for n in shape)
    n_ctrl = max(2, int(math.ceil(1.0 / profile.bias_smoothness))) + 1
    coarse_shape = tuple(n_ctrl if n > 1 else 1 for n in shape)
    coarse = rng.standard_normal(coarse_shape)
    if profile.bias_strength == 0:
        return np.ones(shape)
    field = _resize(coarse, shape, order=3)
    field -= field.mean()
    std = field.std()
    if std > 0:
        field /= std
    return np.exp(profile.bias_strength * field)


def _degrade_resolution(u: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Area-averaging blur and linear resampling to ``1 / factor`` of each axis, then back (factor 1: untouched)."""
    low_shape = [max(2, int(round(n / f))) if f > 1.0 else n for n, f in zip(u.shape, factors)]
    sigma = [0.5 * math.sqrt(max(f**2 - 1.0, 0.0)) for f in factors]
    low = _resize(ndimage.gaussian_filter(u, sigma), low_shape, order=1)
    return _resize(low, u.shape, order=1)


def axis_scales(shape: Sequence[int], spacing: Sequence[float] | None, in_plane: bool = False) -> list[float]:
    """Each axis's finest voxel size over its own (1 for an isotropic grid; 0 for an axis left untouched).

    Axes of one voxel are left untouched, and with ``in_plane`` every axis after the first two.

    Raises:
        ConfigError: ``spacing`` does not give one positive size per axis.
    """
    axes = [ax for ax in _spatial_axes(shape) if ax < 2 or not in_plane]
    if spacing is None:
        return [1.0 if ax in axes else 0.0 for ax in range(len(shape))]
    if len(spacing) != len(shape) or any(not (float(s) > 0) for s in spacing):
        raise ConfigError(f"simulated site: spacing {tuple(spacing)} does not fit an image of shape {tuple(shape)}")
    finest = min(float(spacing[ax]) for ax in axes) if axes else 1.0
    return [finest / float(spacing[ax]) if ax in axes else 0.0 for ax in range(len(shape))]


def apply_site(
    image: np.ndarray,
    profile: SiteProfile,
    rng: np.random.Generator,
    *,
    value_range: tuple[float, float] | None = None,
    bias: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    in_plane: bool = False,
) -> np.ndarray:
    """Apply a site's acquisition effects to one image.

    Args:
        image: a 2D or 3D array (one channel).
        profile: the site.
        rng: per-case randomness (bias field, unless given, and noise).
        value_range: intensities mapped to ``[0, 1]`` before the effects; default: the image's minimum and 99.5th
            percentile (values outside the range are kept; gamma is applied as ``sign(u) * |u| ** gamma``).
        bias: a precomputed field from :func:`random_bias_field` (share one between the channels of a case).
        spacing: the voxel size of each axis (any unit); resolution and blur then act in physical units (see the
            module docstring). None: every axis counts as the finest.
        in_plane: resolution and blur on the first two axes only.

    Returns:
        The transformed image, float32, same shape and units as ``image``.
    """
    x = np.asarray(image, dtype=np.float64)
    if value_range is None:
        lo, hi = float(x.min()), float(np.percentile(x, 99.5))
    else:
        lo, hi = (float(v) for v in value_range)
    scale = hi - lo if hi > lo else 1.0
    u = (x - lo) / scale
    scales = axis_scales(u.shape, spacing, in_plane)

    if profile.gamma != 1.0:
        u = np.sign(u) * np.abs(u) ** profile.gamma  # odd extension: values below value_range stay ordered
    if bias is None:
        bias = random_bias_field(u.shape, profile, rng)
    elif bias.shape != u.shape:
        raise ConfigError(f"site {profile.name!r}: bias field shape {bias.shape} != image shape {u.shape}")
    u = u * bias
    factors = [max(1.0, profile.resolution * k) for k in scales]
    if any(f > 1.0 for f in factors):
        u = _degrade_resolution(u, factors)
    if profile.blur_sigma > 0:
        u = ndimage.gaussian_filter(u, [profile.blur_sigma * k for k in scales])
    if profile.noise_std > 0:
        n1 = rng.standard_normal(u.shape) * profile.noise_std
        if profile.noise_type == "rician":
            n2 = rng.standard_normal(u.shape) * profile.noise_std
            u = np.sqrt((u + n1) ** 2 + n2**2)
        else:
            u = u + n1
    u = profile.contrast * u + profile.offset
    return (lo + u * scale).astype(np.float32)
