"""Site folders: one folder per acquisition site, as the six-site prostate MRI set is distributed.

Layout (SAML / MS-Net distribution of paper A's data)::

    ROOT/
      BIDMC/Case00.nii.gz  BIDMC/Case00_segmentation.nii.gz  ...
      BMC/Case00.nii.gz    BMC/Case00_Segmentation.nii.gz    ...   (capitalisation varies by site)
      HK/ ...  I2CVB/ ...  RUNMC/ ...  UCL/ ...
      dataset.json         (optional: "channel_names" and / or "labels", nnU-Net or MSD style)

* the site of a case is its folder; the case id is ``<site>_<stem>`` (e.g. ``BMC_Case00``) so ids are unique
  across sites;
* a label is the image's name plus ``_segmentation`` before ``.nii[.gz]``, matched case-insensitively;
* without a ``dataset.json`` the labels are ``{background: 0, prostate: 1}`` and label values above 1 (e.g.
  prostate zones) are merged into 1, paper A's whole-gland protocol; the one channel is named ``T2``.

Example:
    >>> index = read_dataset("prostate_sites")            # doctest: +SKIP
    >>> index.format, index.sites[:2], index.cases[0].case_id
    ('site_folders', ['BIDMC', 'BMC'], 'BIDMC_Case00')
"""

from __future__ import annotations

import re
from pathlib import Path

from medkd.data.formats_base import (
    Case,
    DatasetIndex,
    channel_names,
    labels_from_json,
    load_dataset_json,
    register_format,
)
from medkd.errors import DataError

__all__ = ["DEFAULT_CHANNEL", "DEFAULT_LABELS", "read_site_folders"]

#: Labels used when the folder has no dataset.json (values > 1 are merged into 1).
DEFAULT_LABELS: dict[str, int] = {"background": 0, "prostate": 1}
#: Channel name used when the folder has no dataset.json.
DEFAULT_CHANNEL = "T2"

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
_SEG = re.compile(r"^(?P<stem>.+)_segmentation$", re.IGNORECASE)


def _nifti_stem(path: Path) -> str | None:
    m = _NIFTI.match(path.name)
    return m["stem"] if m and path.is_file() and not path.name.startswith(".") else None


def _site_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_site_folders(root: Path) -> bool:
    if (root / "imagesTr").is_dir():
        return False
    for d in _site_dirs(root):
        for f in d.iterdir():
            stem = _nifti_stem(f)
            if stem is not None and _SEG.match(stem):
                return True
    return False


@register_format("site_folders", _is_site_folders, order=40)
def read_site_folders(root: Path) -> DatasetIndex:
    """Read a folder of site folders (see the module docstring).

    An image without its ``_segmentation`` file, a segmentation without its image, and two files that
    name the same case (``Case01.nii`` and ``case01.nii.gz``) are recorded as issues.
    """
    root = Path(root)
    json_path = root / "dataset.json"
    channels, labels, merge_above = [DEFAULT_CHANNEL], dict(DEFAULT_LABELS), 1
    if json_path.is_file():
        data = load_dataset_json(root)
        if "channel_names" in data or "modality" in data:
            channels = channel_names(data, json_path)
            if len(channels) != 1:
                raise DataError(f"{json_path}: site folders hold one channel per case, {len(channels)} declared")
        if "labels" in data:
            labels, merge_above = labels_from_json(data, json_path), None
    issues: list[str] = []
    cases: list[Case] = []
    for f in sorted(root.iterdir()):
        if _nifti_stem(f) is not None:
            issues.append(f"{f}: NIfTI file outside a site folder (expected ROOT/<site>/<case>.nii.gz)")
    for site_dir in _site_dirs(root):
        site = site_dir.name
        images: dict[str, Path] = {}
        segs: dict[str, Path] = {}
        for f in sorted(site_dir.iterdir()):
            stem = _nifti_stem(f)
            if stem is None:
                continue
            seg = _SEG.match(stem)
            key = (seg["stem"] if seg else stem).lower()
            target = segs if seg else images
            if key in target:
                issues.append(f"{f}: duplicate case id {site + '_' + key!r} (also {target[key]})")
                continue
            target[key] = f
        for key, image in images.items():
            stem = _NIFTI.match(image.name)["stem"]
            if key not in segs:
                issues.append(f"{image}: segmentation file missing (expected {site_dir / stem}_segmentation.nii.gz)")
                continue
            cases.append(Case(f"{site}_{stem}", (image,), segs[key], site))
        for key, seg in segs.items():
            if key not in images:
                issues.append(f"{seg}: segmentation without an image")
    if not cases and not issues:
        raise DataError(f"{root}: no <site>/<case>.nii.gz + <case>_segmentation.nii.gz pairs found")
    meta = {"label_rule": "values > 1 merged into 1 (whole gland)"} if merge_above is not None else {}
    return DatasetIndex(root, "site_folders", channels, labels, cases, meta=meta, merge_above=merge_above,
                        issues=issues)
