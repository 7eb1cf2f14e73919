from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from medkd.data import synthetic
from medkd.data.nifti_io import read_nifti
from medkd.data.sites import make_site_profiles
from medkd.data.synthetic import (
    LABELS,
    TISSUES,
    case_generators,
    channel_names,
    generate_dataset,
    load_summary,
    render_phantom,
    synthesize_case,
)
from medkd.errors import ConfigError, MedkdError

T = {name: i for i, name in enumerate(TISSUES)}


def _contrast(a: np.ndarray, b: np.ndarray, signed: bool = False) -> float:
    """|mean difference| (or the signed difference) / pooled standard deviation."""
    d = float((a.mean() - b.mean()) / np.sqrt(0.5 * (a.var() + b.var())))
    return d if signed else abs(d)


def _load(folder, case, channels):
    images = [read_nifti(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")[0] for c in range(channels)]
    return images, read_nifti(folder / "labelsTr" / f"{case}.nii.gz")[0]


@pytest.fixture(scope="module")
def default_2d(tmp_path_factory):
    """The default dataset: 48 2D cases of 128x128, 3 sites, 1 modality."""
    out = tmp_path_factory.mktemp("d2") / "synth"
    start = time.perf_counter()
    path = generate_dataset(out, seed=0)
    return path, time.perf_counter() - start


@pytest.fixture(scope="module")
def multimodal_2d(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("mm") / "synth", cases=18, sites=3, modalities=2, seed=1)


def test_default_layout(default_2d):
    path, seconds = default_2d
    assert seconds < 30.0  # a few seconds on a normal machine; generous for a busy shared CPU
    meta = json.loads((path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2"}
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2} == LABELS
    assert meta["numTraining"] == 48 and meta["file_ending"] == ".nii.gz"
    assert meta["reference"] == "synthetic (medkd)" and meta["name"] and meta["description"]

    ids = [f"synth_{i:03d}" for i in range(48)]
    assert sorted(p.name for p in (path / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in ids]
    assert sorted(p.name for p in (path / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ids]
    assert sorted(p.name for p in path.iterdir()) == ["dataset.json", "imagesTr", "labelsTr", "sites.json"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    sites = json.loads((path / "sites.json").read_text())
    assert sites["generator"] == "medkd.data.synthetic" and sites["seed"] == 0
    assert list(sites["cases"]) == ids
    assert sites["sites"] == {p.name: p.to_dict() for p in make_site_profiles(3, 0)}
    counts = {s: list(sites["cases"].values()).count(s) for s in sites["sites"]}
    assert counts == {"site1": 16, "site2": 16, "site3": 16}

    present = np.zeros(3)
    for case in ids:
        (image,), label = _load(path, case, 1)
        assert image.shape == (128, 128, 1) and image.dtype == np.float32
        assert label.shape == (128, 128, 1) and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2}
        present += [v in values for v in (0, 1, 2)]
        assert np.isfinite(image).all()
    assert (present >= 0.9 * 48).all()

    summary = load_summary(path)
    assert summary.num_cases == 48 and summary.dim == 2 and summary.shape == (128, 128)
    assert summary.cases_per_site == counts and summary.channel_names == ("T2",)
    assert "48 2D cases" in str(summary)


def test_deterministic(tmp_path):
    kwargs = dict(dim=2, cases=4, sites=2, modalities=2, size=48)
    a = generate_dataset(tmp_path / "a", seed=7, **kwargs)
    b = generate_dataset(tmp_path / "b", seed=7, **kwargs)
    c = generate_dataset(tmp_path / "c", seed=8, **kwargs)
    for case in range(4):
        for sub in (
            f"imagesTr/synth_{case:03d}_0000.nii.gz",
            f"imagesTr/synth_{case:03d}_0001.nii.gz",
            f"labelsTr/synth_{case:03d}.nii.gz",
        ):
            arr_a, arr_b, arr_c = (read_nifti(p / sub)[0] for p in (a, b, c))
            np.testing.assert_array_equal(arr_a, arr_b)
            assert (a / sub).read_bytes() == (b / sub).read_bytes()
            assert not np.array_equal(arr_a, arr_c)
    assert (a / "sites.json").read_text() == (b / "sites.json").read_text()


def test_3d_layout(tmp_path):
    path = generate_dataset(tmp_path / "d3", dim=3, cases=3, sites=3, size=(40, 40, 24), seed=2)
    meta = json.loads((path / "dataset.json").read_text())
    assert meta["numTraining"] == 3
    for case in range(3):
        (image,), label = _load(path, f"synth_{case:03d}", 1)
        assert image.shape == label.shape == (40, 40, 24)
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        # the organ is a compact 3D blob: it spans several slices but not the whole stack
        z = np.nonzero((label > 0).any(axis=(0, 1)))[0]
        assert 4 <= len(z) < 24


def test_overwrite_refused_and_interrupted_run(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(MedkdError) as err:
        generate_dataset(out, cases=2, sites=1, size=32)
    assert "ds" in str(err.value) and "\n" not in str(err.value)
    assert (out / "keep.txt").read_text() == "user data"

    calls = {"n": 0}
    real = synthetic.write_nifti

    def failing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_nifti", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "fresh", cases=4, sites=2, size=32)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, cases=4, sites=2, size=32, overwrite=True)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial folder anywhere
    assert (out / "keep.txt").read_text() == "user data"  # the old content survives a failed overwrite

    generate_dataset(out, cases=2, sites=1, size=32, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, cases=2, sites=1, size=32)  # an empty folder is fine
    assert (empty / "sites.json").is_file()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=4), "dim"),
        (dict(modalities=5), "modalities"),
        (dict(modalities=0), "modalities"),
        (dict(cases=2, sites=3), "sites"),
        (dict(size=(64, 64, 8)), "size"),
        (dict(cases=0), "cases"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_channel_names():
    assert channel_names(1) == ("T2",)
    assert channel_names(2) == ("T1", "T2")
    assert channel_names(4) == ("T1", "T2", "FLAIR", "PD")


def test_sites_differ_much_more_than_cases(default_2d):
    """Per-site statistics of the same tissue differ between sites far more than between cases of a site."""
    path, _ = default_2d
    sites = json.loads((path / "sites.json").read_text())["cases"]
    stats: dict[str, list[tuple[float, float, float]]] = {}
    for case, site in sites.items():
        (image,), label = _load(path, case, 1)
        image, label = image[..., 0], label[..., 0]
        organ = ndimage.binary_erosion(label >= 1, iterations=2) & ~ndimage.binary_dilation(label == 2, iterations=2)
        lesion = ndimage.binary_erosion(label == 2)
        air = np.concatenate([image[:10, :10].ravel(), image[-10:, -10:].ravel(), image[:10, -10:].ravel()])
        stats.setdefault(site, []).append(
            (float(image[organ].mean()), float(np.median(image[organ]) / np.median(image[lesion])), float(air.std()))
        )
    groups_by_stat = [[np.array(v)[:, k] for v in stats.values()] for k in range(3)]
    separation = np.zeros((3, 3))
    for name, groups in zip(["organ mean", "organ/lesion ratio", "background noise"], groups_by_stat):
        site_means = np.array([g.mean() for g in groups])
        within_sd = np.sqrt(np.mean([g.var(ddof=1) for g in groups]))
        # one-way ANOVA F statistic: between-site variance of the means (x group size) / pooled within-site variance
        f_stat = len(groups[0]) * site_means.var(ddof=1) / within_sd**2
        assert f_stat > 15, (name, f_stat)
        separation = np.maximum(separation, np.abs(site_means[:, None] - site_means[None, :]) / within_sd)
    # every pair of sites is far apart (in within-site standard deviations) in at least one statistic
    assert separation[np.triu_indices(3, 1)].min() > 2.5, separation


def test_multimodal_only_class(multimodal_2d):
    """The lesion is iso-intense to the organ in modality 0 (T1) and bright in modality 1 (T2)."""
    path = multimodal_2d
    meta = json.loads((path / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    contrasts = []
    for case in range(18):
        (t1, t2), label = _load(path, f"synth_{case:03d}", 2)
        label = label[..., 0]
        lesion = ndimage.binary_erosion(label == 2)
        ring = (
            ndimage.binary_dilation(label == 2, iterations=5)
            & ~ndimage.binary_dilation(label == 2, iterations=1)
            & ndimage.binary_erosion(label >= 1, iterations=2)
        )
        contrasts.append([_contrast(img[..., 0][lesion], img[..., 0][ring], signed=True) for img in (t1, t2)])
    signed = np.array(contrasts)
    contrasts = np.abs(signed)
    assert np.median(contrasts[:, 0]) < 0.5 and contrasts[:, 0].mean() < 0.6 and abs(signed[:, 0].mean()) < 0.4
    assert contrasts[:, 1].min() > 3.0
    assert contrasts[:, 1].mean() > 10 * contrasts[:, 0].mean()


@pytest.mark.parametrize("channels", [("T2",), ("T1", "T2", "FLAIR", "PD")])
def test_class_visibility_per_modality(channels):
    """Organ vs muscle and lesion vs organ contrast (pure-tissue pixels, after site effects), per modality.

    The organ is visible in every modality; the lesion in every modality but T1 (the single-modality dataset is T2,
    so there every class is visible).
    """
    profiles = make_site_profiles(3, seed=0)
    organ_c, lesion_c = [], []
    for i, rng in enumerate(case_generators(0, 6)):
        images, phantom = synthesize_case((96, 96), rng, channels, profiles[i // 2])
        organ = phantom.fractions[T["organ"]] == 1
        muscle = phantom.fractions[T["muscle"]] == 1
        lesion = phantom.fractions[T["lesion"]] == 1
        assert lesion.sum() > 10
        organ_c.append([_contrast(image[organ], image[muscle]) for image in images])
        lesion_c.append([_contrast(image[lesion], image[organ], signed=True) for image in images])
    organ_c, signed = np.array(organ_c), np.array(lesion_c)
    lesion_c = np.abs(signed)
    assert organ_c.min() > 1.0 and (organ_c.mean(0) > 2.5).all()
    for m, name in enumerate(channels):
        if name == "T1":
            # iso-intense: no systematic difference, only the sampling noise of a small textured region
            assert lesion_c[:, m].mean() < 0.6 and abs(signed[:, m].mean()) < 0.4
        else:
            assert lesion_c[:, m].min() > 1.0 and lesion_c[:, m].mean() > 2.0
    if channels == ("T2",):
        assert organ_c.min() > 1.4 and lesion_c.min() > 3.0


def test_partial_volume_at_borders():
    """Organ / muscle border pixels take intermediate intensities; without supersampling they do not."""
    fractions = {}
    for supersample in (None, 1):
        inside = []
        for seed in range(4):
            phantom = render_phantom((128, 128), np.random.default_rng(seed), ("T2",), supersample=supersample)
            image, tissue = phantom.images[0], phantom.tissue
            np.testing.assert_allclose(phantom.fractions.sum(0), 1.0, atol=1e-6)
            organ_mean = image[phantom.fractions[T["organ"]] == 1].mean()
            muscle_mean = image[phantom.fractions[T["muscle"]] == 1].mean()
            gap = organ_mean - muscle_mean
            assert gap > 0.1
            border = ((tissue == T["organ"]) & ndimage.binary_dilation(tissue == T["muscle"])) | (
                (tissue == T["muscle"]) & ndimage.binary_dilation(tissue == T["organ"])
            )
            values = image[border]
            inside.append(np.mean((values > muscle_mean + 0.25 * gap) & (values < organ_mean - 0.25 * gap)))
        fractions[supersample] = float(np.mean(inside))
    assert fractions[None] > 0.2
    assert fractions[None] > 4 * fractions[1]


def test_phantom_anatomy():
    phantom = render_phantom((128, 128), np.random.default_rng(3), ("T1", "T2"))
    tissue = phantom.tissue
    assert phantom.images.shape == (2, 128, 128) and phantom.images.dtype == np.float32
    assert (tissue[0, :] == T["air"]).all() and (tissue[:, 0] == T["air"]).all()  # air around the body
    body = tissue != T["air"]
    assert 0.3 < body.mean() < 0.8
    fat = tissue == T["fat"]
    # the fat rim encloses the body: the outermost body pixels are fat
    edge = body & ~ndimage.binary_erosion(body)
    assert (fat[edge]).mean() > 0.8
    for name in ("muscle", "organ", "lesion", "marrow", "vessel"):
        assert (tissue == T[name]).sum() > 5, name
    # labels are exactly the organ / lesion tissues and the lesion lies within the organ's outline
    assert set(np.unique(phantom.label).tolist()) == {0, 1, 2}
    filled = ndimage.binary_fill_holes(phantom.label >= 1)
    assert filled[phantom.label == 2].all()
