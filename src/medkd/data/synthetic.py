"""Embedded synthetic dataset: procedural abdominal-MR-like phantoms, several sites, one or more modalities.

Each case is an axial cross-section (2D) or a short axial stack (3D) of a body:

* background **air**; an elliptical **body** outline, randomly deformed, with a **subcutaneous fat** rim of varying
  thickness; **muscle / soft tissue** inside; a **vertebra** (cortical ring, marrow, spinal canal with CSF) at the
  posterior midline; two **vessels** (aorta, caval vein) in front of it; a few **bowel** loops (unlabelled
  distractors);
* label 1, **organ**: a large smooth, randomly deformed blob on the left or right of the abdomen (liver / kidney-like);
* label 2, **lesion**: one or two smaller deformed blobs inside the organ.

Tissue **texture** is smooth correlated noise (two scales) modulating each tissue's intensity; **partial volume** comes
from supersampling: tissue membership is evaluated at ``supersample ** dim`` sub-voxel points and the intensity of a
voxel is the fraction-weighted mix of its tissues (the label is the class covering most of the voxel).

Modalities: with ``modalities == 1`` the single channel is ``T2``, where every class is visible. With ``M >= 2`` the
channels are ``T1, T2, FLAIR, PD`` (first M): the lesion is iso-intense to the organ in ``T1`` (same mean, same
texture) and bright in the others, so a multi-modal teacher sees what a ``T1``-only student cannot.

Sites: each case belongs to one site (cases spread evenly, in contiguous blocks); :func:`medkd.data.sites.apply_site`
gives each site its own contrast curve, bias field, resolution, blur and Rician noise, so a model trained on some sites
is worse on an unseen one. Everything is determined by ``seed``.

The folder follows nnU-Net v2's raw layout (``dataset.json``, ``imagesTr/<case>_<CCCC>.nii.gz``,
``labelsTr/<case>.nii.gz``; 2D cases as (H, W, 1) volumes) plus ``sites.json``.

Example:
    >>> path = generate_dataset("synth2d", dim=2, cases=12, sites=3, modalities=2, seed=0)  # doctest: +SKIP
    >>> print(load_summary(path))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medkd.data.nifti_io import make_affine, write_nifti
from medkd.data.sites import SiteProfile, apply_site, make_site_profiles, random_bias_field
from medkd.errors import ConfigError, DataError, MedkdError

__all__ = [
    "DEFAULT_SIZES",
    "LABELS",
    "MODALITIES",
    "TISSUES",
    "Phantom",
    "SyntheticSummary",
    "case_generators",
    "channel_names",
    "generate_dataset",
    "load_summary",
    "render_phantom",
    "synthesize_case",
]

DEFAULT_SIZES = {2: (128, 128), 3: (64, 64, 48)}
LABELS = {"background": 0, "organ": 1, "lesion": 2}
MODALITIES = ("T1", "T2", "FLAIR", "PD")
TISSUES = ("air", "fat", "muscle", "bowel", "cortex", "marrow", "csf", "vessel", "organ", "lesion")
FIELD_OF_VIEW_MM = 320.0  # in-plane extent of axis 0; voxels are isotropic

# Mean clean intensity (0..1) of each tissue per modality. The lesion equals the organ in T1 on purpose.
_INTENSITY = {
    #        air   fat   muscle bowel cortex marrow csf   vessel organ lesion
    "T1": (0.00, 0.95, 0.34, 0.50, 0.06, 0.78, 0.15, 0.10, 0.66, 0.66),
    "T2": (0.00, 0.72, 0.20, 0.56, 0.05, 0.52, 0.96, 0.08, 0.42, 0.88),
    "FLAIR": (0.00, 0.58, 0.26, 0.44, 0.05, 0.45, 0.08, 0.08, 0.52, 0.92),
    "PD": (0.00, 0.82, 0.44, 0.62, 0.10, 0.72, 0.72, 0.18, 0.70, 0.90),
}
# Relative amplitude of the texture per tissue (lesion == organ so it has no texture cue in T1).
_TEXTURE = np.array([0.0, 0.05, 0.08, 0.15, 0.03, 0.10, 0.02, 0.03, 0.08, 0.08])
_T = {name: i for i, name in enumerate(TISSUES)}


def channel_names(modalities: int) -> tuple[str, ...]:
    """Names of the channels written for ``modalities`` channels (``("T2",)`` for one, ``T1, T2, ...`` else)."""
    if modalities < 1 or modalities > len(MODALITIES):
        raise ConfigError(f"modalities: must be between 1 and {len(MODALITIES)}, got {modalities}")
    return ("T2",) if modalities == 1 else MODALITIES[:modalities]


@dataclass
class Phantom:
    """One rendered case before site effects.

    Attributes:
        images: (M, *shape) float32 clean intensities in [0, 1].
        label: (*shape) uint8 label map with the values of :data:`LABELS`.
        tissue: (*shape) uint8 index into :data:`TISSUES` of the tissue covering most of each voxel.
        fractions: (len(TISSUES), *shape) float32 partial-volume fraction of each tissue.
    """

    images: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    fractions: np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# geometry


def _exponents(ndim: int, max_degree: int) -> list[tuple[int, ...]]:
    return [e for e in itertools.product(range(max_degree + 1), repeat=ndim) if 1 <= sum(e) <= max_degree]


class _Blob:
    """A randomly deformed ellipse / ellipsoid (infinite cylinder along axis 2 if ``radii[2]`` is inf)."""

    def __init__(self, center, radii, angle, deform, rng, centers, tilt=(0.0, 0.0), degree=3):
        self.center = np.asarray(center, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.tilt = tilt
        ndim = centers.shape[0]
        # star-shaped deformation: radius scaled by 1 + g(direction), g a random low-degree polynomial
        terms = _exponents(ndim, degree) if deform > 0 else []
        g = np.zeros(centers.shape[1:])
        if terms:
            v = self._local(centers)
            r = np.sqrt(sum(c * c for c in v)) + 1e-9
            powers = [[None, c / r] for c in v]
            for p in powers:
                for _ in range(degree - 1):
                    p.append(p[-1] * p[1])
            for exps in terms:
                term = None
                for ax, e in enumerate(exps):
                    if e:
                        term = powers[ax][e] if term is None else term * powers[ax][e]
                g += rng.normal(0.0, deform / math.sqrt(len(terms))) * term
        self.scale = 1.0 + np.clip(g, -0.45, 0.6)

    def _local(self, q: np.ndarray) -> list[np.ndarray]:
        x = q[0] - self.center[0]
        y = q[1] - self.center[1]
        if q.shape[0] == 3:
            x = x - self.tilt[0] * q[2]
            y = y - self.tilt[1] * q[2]
        v = [(self.cos * x + self.sin * y) / self.radii[0], (-self.sin * x + self.cos * y) / self.radii[1]]
        if q.shape[0] == 3:
            v.append((q[2] - self.center[2]) / self.radii[2])
        return v

    def radius(self, q: np.ndarray) -> np.ndarray:
        """Deformed normalised radius at points ``q``: < 1 inside."""
        v = self._local(q)
        return np.sqrt(sum(c * c for c in v)) / self.scale


def _smooth_field(shape: Sequence[int], n_ctrl: int, rng: np.random.Generator) -> np.ndarray:
    """Cubic-spline upsampling of a coarse random grid (one axis at a time: the spline is separable)."""
    field = rng.standard_normal([n_ctrl if n > 1 else 1 for n in shape])
    for ax, n in enumerate(shape):
        factors = [1.0] * len(shape)
        factors[ax] = n / field.shape[ax]
        field = ndimage.zoom(field, factors, order=3, mode="nearest", grid_mode=True)
    return field


def _texture(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape), 1.6)
    tex = fine / (fine.std() + 1e-9) * 0.8 + coarse / (coarse.std() + 1e-9) * 0.4
    return np.clip(tex / (tex.std() + 1e-9), -3.0, 3.0)


class _Drawer:
    """Draws the blobs of one case from one random stream (the order of draws fixes the phantom)."""

    def __init__(self, rng: np.random.Generator, centers: np.ndarray):
        self.rng, self.centers, self.ndim = rng, centers, centers.shape[0]
        self.three_d = self.ndim == 3

    def blob(self, center, radii, angle=0.0, deform=0.0, tilt=(0.0, 0.0), degree=3) -> _Blob:
        c = list(center) + ([0.0] if self.three_d and len(center) == 2 else [])
        r = list(radii) + ([math.inf] if self.three_d and len(radii) == 2 else [])
        return _Blob(c[:self.ndim], r[:self.ndim], angle, deform, self.rng, self.centers, tilt, degree)

    def drift(self) -> tuple[float, float]:
        return tuple(self.rng.normal(0.0, 0.06, size=2)) if self.three_d else (0.0, 0.0)


def _draw_body(d: _Drawer) -> tuple[_Blob, np.ndarray, tuple[float, float, float]]:
    """Elliptic cross-section (a cylinder along z in 3D) and its fat rim of varying thickness."""
    rng = d.rng
    bx, by = rng.normal(0.0, 0.02), 0.04 + rng.normal(0.0, 0.02)
    ba, bb = rng.uniform(0.78, 0.9), rng.uniform(0.56, 0.68)
    body = d.blob((bx, by), (ba, bb), rng.normal(0.0, 0.06), 0.05, d.drift())
    rim = rng.uniform(0.05, 0.11) * (1.0 + 0.5 * np.tanh(_smooth_field(d.centers.shape[1:], 5, rng)))
    return body, 1.0 - rim, (bx, by, bb)


def _draw_spine(d: _Drawer, bx: float, by: float, bb: float) -> list[_Blob]:
    """Vertebra, marrow and canal at the posterior midline (+y); aorta and cava just anterior to it."""
    rng = d.rng
    sx, sy = bx + rng.normal(0.0, 0.015), by + bb - rng.uniform(0.3, 0.36)
    sr = rng.uniform(0.1, 0.12)
    vertebra = d.blob((sx, sy), (sr * 1.1, sr), rng.normal(0.0, 0.05), 0.04)
    marrow = d.blob((sx, sy), (sr * 1.1 - 0.022, sr - 0.022), 0.0, 0.0)
    canal = d.blob((sx, sy + sr + 0.05), (0.045, 0.04), 0.0, 0.03)
    aorta = d.blob((sx - 0.07, sy - sr - 0.06), (0.042, 0.042), 0.0, 0.02, d.drift())
    cava = d.blob((sx + 0.1, sy - sr - 0.05), (0.06, 0.04), rng.normal(0.0, 0.2), 0.05, d.drift())
    return [vertebra, marrow, canal, aorta, cava]


def _draw_fat_field(d: _Drawer) -> np.ndarray:
    """Visceral fat: irregular smooth patches between the loops, mostly anterior (fat where > 0)."""
    grid = d.centers.shape[1:]
    fat_field = ndimage.gaussian_filter(d.rng.standard_normal(grid), [0.07 * grid[0] if n > 1 else 0 for n in grid])
    return fat_field / (fat_field.std() + 1e-9) - 1.5 * d.centers[1] - d.rng.uniform(0.4, 0.9)


def _draw_bowel(d: _Drawer) -> list[_Blob]:
    """Bowel loops in the anterior abdomen."""
    rng, bowel = d.rng, []
    for _ in range(int(rng.integers(3, 7))):
        c = (rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.05), rng.uniform(-0.5, 0.5))
        rad = rng.uniform(0.05, 0.11)
        bowel.append(d.blob(c, (rad, rad * rng.uniform(0.6, 1.0), rad * 1.5), rng.uniform(0, math.pi), 0.15))
    return bowel


def _draw_organ(d: _Drawer, bx: float) -> tuple[_Blob, list[_Blob]]:
    """The organ on one side and one or two lesions inside it."""
    rng = d.rng
    side = 1.0 if rng.random() < 0.5 else -1.0
    oc = (side * rng.uniform(0.24, 0.38) + bx, rng.uniform(-0.18, 0.1), rng.normal(0.0, 0.05))
    orad = (rng.uniform(0.22, 0.32), rng.uniform(0.17, 0.24), rng.uniform(0.35, 0.48))
    organ = d.blob(oc, orad, rng.uniform(-0.6, 0.6), 0.22, degree=4)
    lesions = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        direction = rng.normal(size=3) * np.array([1.0, 1.0, 0.5])
        direction /= np.linalg.norm(direction)
        dist = rng.uniform(0.0, 0.4)
        lc = [oc[i] + direction[i] * dist * orad[i] for i in range(3)]
        base = min(orad[:d.ndim]) * rng.uniform(0.3, 0.48)
        lesions.append(d.blob(lc, (base, base * rng.uniform(0.75, 1.0), base), rng.uniform(0, math.pi), 0.2))
    return organ, lesions


def _any_inside(blobs: Sequence[_Blob], q: np.ndarray) -> np.ndarray:
    hit = np.zeros(q.shape[1:], dtype=bool)
    for b in blobs:
        hit |= b.radius(q) < 1.0
    return hit


def _case_anatomy(rng: np.random.Generator, centers: np.ndarray) -> list[tuple[int, object]]:
    """Draw one case's structures, returned in painting order as (tissue index, predicate on coordinates)."""
    d = _Drawer(rng, centers)
    body, inner, (bx, by, bb) = _draw_body(d)
    vertebra, marrow, canal, aorta, cava = _draw_spine(d, bx, by, bb)
    fat_field = _draw_fat_field(d)
    bowel = _draw_bowel(d)
    organ, lesions = _draw_organ(d, bx)

    def inside(b):
        return lambda q: b.radius(q) < 1.0

    def body_interior(q):
        return body.radius(q) < inner

    def organ_inside(q):
        return (organ.radius(q) < 1.0) & body_interior(q)

    return [
        (_T["fat"], inside(body)),
        (_T["muscle"], body_interior),
        (_T["fat"], lambda q: (fat_field > 0) & (body.radius(q) < inner - 0.08)),
        (_T["bowel"], lambda q: _any_inside(bowel, q) & body_interior(q)),
        (_T["cortex"], inside(vertebra)),
        (_T["marrow"], inside(marrow)),
        (_T["csf"], inside(canal)),
        (_T["vessel"], inside(aorta)),
        (_T["vessel"], inside(cava)),
        (_T["organ"], organ_inside),
        (_T["lesion"], lambda q: _any_inside(lesions, q) & organ_inside(q)),
    ]


def render_phantom(
    shape: Sequence[int],
    rng: np.random.Generator,
    channels: Sequence[str] = ("T2",),
    supersample: int | None = None,
) -> Phantom:
    """Render one clean case (no site effects).

    Args:
        shape: (H, W) or (H, W, D) voxels; voxels are isotropic, axis 0 spans the field of view.
        rng: the case's random generator (consumed deterministically).
        channels: modality names from :data:`MODALITIES`.
        supersample: sub-voxel points per axis for partial volume (default 3 in 2D, 2 in 3D; 1 = none).

    Returns:
        The :class:`Phantom`.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ConfigError(f"size: expected 2 or 3 values, got {shape}")
    for name in channels:
        if name not in _INTENSITY:
            raise ConfigError(f"unknown modality {name!r}; valid: {', '.join(MODALITIES)}")
    s = supersample or (3 if ndim == 2 else 2)
    step = 2.0 / shape[0]  # normalised units per voxel; axis 0 spans [-1, 1]
    axes = [(np.arange(n) - (n - 1) / 2.0) * step for n in shape]
    centers = np.stack(np.meshgrid(*axes, indexing="ij"))
    # gentle global elastic deformation
    displacement = np.stack([_smooth_field(shape, 5, rng) * 0.025 for _ in range(ndim)])
    warped = centers + displacement
    structures = _case_anatomy(rng, warped)

    counts = np.zeros((len(TISSUES),) + shape, dtype=np.float32)
    subs = [((k + 0.5) / s - 0.5) * step for k in range(s)]
    for offset in itertools.product(subs, repeat=ndim):
        q = warped + np.asarray(offset).reshape((ndim,) + (1,) * ndim)
        tissue = np.zeros(shape, dtype=np.uint8)
        for index, predicate in structures:
            tissue[predicate(q)] = index
        for t in range(len(TISSUES)):
            counts[t] += tissue == t
    fractions = counts / float(s**ndim)

    # per-case intensity jitter (the T1 lesion stays equal to the organ)
    jitter = 1.0 + rng.normal(0.0, 0.04, size=len(TISSUES))
    tex = _texture(shape, rng)
    modulation = 1.0 + np.tensordot(_TEXTURE, fractions, axes=1) * tex
    images = []
    for name in channels:
        mu = np.asarray(_INTENSITY[name]) * jitter
        if name == "T1":
            mu[_T["lesion"]] = mu[_T["organ"]]
        images.append(np.clip(np.tensordot(mu, fractions, axes=1) * modulation, 0.0, None))

    organ_f = fractions[_T["organ"]]
    lesion_f = fractions[_T["lesion"]]
    label = np.argmax(np.stack([1.0 - organ_f - lesion_f, organ_f, lesion_f]), axis=0).astype(np.uint8)
    return Phantom(
        images=np.stack(images).astype(np.float32),
        label=label,
        tissue=np.argmax(fractions, axis=0).astype(np.uint8),
        fractions=fractions,
    )


def case_generators(seed: int, cases: int) -> list[np.random.Generator]:
    """The independent per-case random generators :func:`generate_dataset` uses for ``seed``."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(int(cases))]


def synthesize_case(
    shape: Sequence[int], rng: np.random.Generator, channels: Sequence[str], profile: SiteProfile
) -> tuple[np.ndarray, Phantom]:
    """Render one case and apply its site (one bias field shared by all channels, noise per channel).

    Args:
        shape: voxels per axis.
        rng: the case's generator (see :func:`case_generators`).
        channels: modality names.
        profile: the case's site.

    Returns:
        ``(images, phantom)``: the (M, *shape) float32 acquired images and the clean :class:`Phantom`.
    """
    phantom = render_phantom(shape, rng, channels)
    bias = random_bias_field(phantom.label.shape, profile, rng)
    images = np.stack([apply_site(img, profile, rng, value_range=(0.0, 1.0), bias=bias) for img in phantom.images])
    return images, phantom


# ----------------------------------------------------------------------------------------------------------------
# dataset folder


@dataclass
class SyntheticSummary:
    """What a synthetic dataset folder holds (see :func:`load_summary`)."""

    path: Path
    dim: int
    shape: tuple[int, ...]
    num_cases: int
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    cases_per_site: dict[str, int] = field(default_factory=dict)
    seed: int | None = None

    def __str__(self) -> str:
        sites = ", ".join(f"{k}: {v}" for k, v in self.cases_per_site.items())
        size = "x".join(str(n) for n in self.shape)
        return (
            f"{self.path}: {self.num_cases} {self.dim}D cases of {size}, channels {', '.join(self.channel_names)}, "
            f"labels {', '.join(k for k in self.labels if k != 'background')}, sites ({sites}), seed {self.seed}"
        )


def load_summary(path: str | os.PathLike) -> SyntheticSummary:
    """Read ``dataset.json`` and ``sites.json`` of a synthetic dataset folder into a :class:`SyntheticSummary`."""
    path = Path(path)
    try:
        meta = json.loads((path / "dataset.json").read_text())
        sites = json.loads((path / "sites.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a synthetic dataset folder ({type(exc).__name__}: {exc})") from exc
    synth = meta.get("medkd_synthetic", {})
    counts: dict[str, int] = {name: 0 for name in sites.get("sites", {})}
    for site in sites.get("cases", {}).values():
        counts[site] = counts.get(site, 0) + 1
    return SyntheticSummary(
        path=path,
        dim=int(synth.get("dim", 0)),
        shape=tuple(synth.get("shape", ())),
        num_cases=int(meta.get("numTraining", 0)),
        channel_names=tuple(meta["channel_names"][k] for k in sorted(meta["channel_names"], key=int)),
        labels=dict(meta["labels"]),
        cases_per_site=counts,
        seed=sites.get("seed"),
    )


def _resolve_size(dim: int, size: int | Sequence[int] | None) -> tuple[int, ...]:
    if dim not in (2, 3):
        raise ConfigError(f"dim: must be 2 or 3, got {dim!r}")
    if size is None:
        return DEFAULT_SIZES[dim]
    shape = (int(size),) * dim if isinstance(size, (int, np.integer)) else tuple(int(n) for n in size)
    if len(shape) != dim or min(shape) < 16:
        raise ConfigError(f"size: need {dim} values >= 16 for dim={dim}, got {size!r}")
    return shape


def _write_case(folder: Path, case_id: str, images: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    extra = (1,) if label.ndim == 2 else ()
    for c, image in enumerate(images):
        write_nifti(
            folder / "imagesTr" / f"{case_id}_{c:04d}.nii.gz",
            image.reshape(image.shape + extra),
            affine=affine,
            dtype=np.float32,
        )
    write_nifti(
        folder / "labelsTr" / f"{case_id}.nii.gz", label.reshape(label.shape + extra), affine=affine, dtype=np.uint8
    )


def generate_dataset(
    out_dir: str | os.PathLike,
    dim: int = 2,
    cases: int = 48,
    sites: int = 3,
    modalities: int = 1,
    seed: int = 0,
    size: int | Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic multi-site segmentation dataset in nnU-Net v2 raw layout.

    Args:
        out_dir: the dataset folder to create. An existing non-empty folder is refused unless ``overwrite``.
        dim: 2 (single slices written as (H, W, 1)) or 3.
        cases: number of cases (>= ``sites``).
        sites: number of simulated acquisition sites; cases are spread evenly in contiguous blocks.
        modalities: channels per case, 1 to 4 (see the module docstring for which class each one shows).
        seed: the only source of randomness; the same arguments give byte-identical arrays.
        size: voxels per axis (an int or ``dim`` values); default 128x128 (2D) or 64x64x48 (3D).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The dataset folder. It appears complete or not at all: files are written to a temporary sibling folder
        that is renamed at the end.
    """
    out_dir = Path(out_dir)
    shape = _resolve_size(dim, size)
    names = channel_names(modalities)
    if int(cases) != cases or cases < 1:
        raise ConfigError(f"cases: must be a positive integer, got {cases!r}")
    if int(sites) != sites or sites < 1 or sites > cases:
        raise ConfigError(f"sites: must be between 1 and the number of cases ({cases}), got {sites!r}")
    cases, sites = int(cases), int(sites)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedkdError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MedkdError(f"{out_dir}: already exists and is not empty; pass overwrite=True (--overwrite) to replace it")

    profiles = make_site_profiles(sites, seed)
    case_ids = [f"synth_{i:03d}" for i in range(cases)]
    case_site = {cid: profiles[i * sites // cases] for i, cid in enumerate(case_ids)}
    spacing = (FIELD_OF_VIEW_MM / shape[0],) * 3
    affine = make_affine(spacing, shape)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for cid, rng in zip(case_ids, case_generators(seed, cases)):
            images, phantom = synthesize_case(shape, rng, names, case_site[cid])
            _write_case(tmp, cid, images, phantom.label, affine)
        _write_metadata(tmp, dim, shape, names, case_ids, case_site, profiles, seed, spacing)
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_metadata(folder, dim, shape, names, case_ids, case_site, profiles: list[SiteProfile], seed, spacing):
    dataset = {
        "name": f"medkd-synthetic-{dim}d",
        "description": (
            f"Synthetic abdominal-MR-like phantoms ({dim}D, {len(case_ids)} cases, {len(profiles)} simulated sites): "
            "organ (label 1) with lesion(s) inside (label 2); the lesion is iso-intense in T1."
        ),
        "reference": "synthetic (medkd)",
        "licence": "CC0",
        "channel_names": {str(i): n for i, n in enumerate(names)},
        "labels": dict(LABELS),
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
        "medkd_synthetic": {"dim": dim, "shape": list(shape), "spacing_mm": list(spacing), "seed": int(seed)},
    }
    sites = {
        "cases": {cid: case_site[cid].name for cid in case_ids},
        "sites": {p.name: p.to_dict() for p in profiles},
        "seed": int(seed),
        "generator": "medkd.data.synthetic",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    (folder / "sites.json").write_text(json.dumps(sites, indent=2) + "\n")
