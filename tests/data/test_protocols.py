"""Protocols: seeded k-fold, leave-one-site-out, student data fraction, simulated sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medkd.config import SplitConfig
from medkd.data.formats import read_dataset, read_image
from medkd.data.nifti_io import write_nifti
from medkd.data.pipeline import load_case
from medkd.data.protocols import (
    assign_sites,
    fold_splits,
    kfold_test_indices,
    simulate_sites,
    site_splits,
)
from medkd.data.splits import case_group, make_split, subsample_cases
from medkd.errors import ConfigError

PATIENT = r"patient\d+"


def _dataset(root: Path, patients: int = 10, frames: int = 2, channels: int = 1, sites: bool = False) -> Path:
    """``patients x frames`` tiny cases named like ACDC (``patient001_frame01``)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)}, "file_ending": ".nii.gz",
        "labels": {"background": 0, "fg": 1}}))
    rng = np.random.default_rng(0)
    site_of = {}
    for p in range(1, patients + 1):
        for f in range(1, frames + 1):
            cid = f"patient{p:03d}_frame{f:02d}"
            for c in range(channels):
                write_nifti(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz",
                            rng.uniform(10, 100, size=(12, 10, 3)).astype(np.float32))
            lab = np.zeros((12, 10, 3), dtype=np.uint8)
            lab[3:8, 2:7] = 1
            write_nifti(root / "labelsTr" / f"{cid}.nii.gz", lab)
            site_of[cid] = f"S{p % 3}"
    if sites:
        (root / "sites.json").write_text(json.dumps({"cases": site_of}))
    return root


@pytest.fixture(scope="module")
def acdc_like(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("proto") / "acdc_like", patients=10)


@pytest.fixture(scope="module")
def multisite(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("proto") / "multisite", patients=9, frames=1, sites=True)


def test_kfold_indices_follow_sklearn_kfold_semantics():
    # scikit-learn KFold(shuffle=True, random_state=seed): RandomState(seed) permutation, then consecutive
    # folds, the first n % k of them one longer (= numpy.array_split of the permutation)
    for n, k in [(10, 5), (11, 3), (200, 5), (7, 7)]:
        perm = np.random.RandomState(12345).permutation(n)
        expected = np.array_split(perm, k)
        got = kfold_test_indices(n, k)
        assert [len(f) for f in got] == [len(f) for f in expected]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    # golden value (regression): 10 items, 5 folds, nnU-Net's seed
    assert [f.tolist() for f in kfold_test_indices(10, 5)] == [
        f.tolist() for f in np.array_split(np.random.RandomState(12345).permutation(10), 5)]
    with pytest.raises(ConfigError, match="3 folds but only 2"):
        kfold_test_indices(2, 3)


def test_fold_splits_are_disjoint_cover_everything_and_keep_patients_together(acdc_like):
    index = read_dataset(acdc_like)
    folds = fold_splits(index, k=5, group_pattern=PATIENT, val=0.25, val_seed=0)
    all_ids = sorted(c.case_id for c in index.cases)
    tests = [set(f["test"]) for f in folds]
    assert sorted(i for t in tests for i in t) == all_ids  # coverage, no case twice
    assert all(len(t) == 4 for t in tests)  # 10 patients / 5 folds = 2 patients = 4 frames
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and not set(f["val"]) & set(f["test"])
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"] + f["test"]) == all_ids
        assert len(f["val"]) == 4  # round(0.25 * 8 patients) = 2 patients
        for part in f.values():  # both frames of a patient always in the same part
            patients = {case_group(c, PATIENT) for c in part}
            assert len(part) == 2 * len(patients)
    # deterministic, and the seed matters
    assert fold_splits(index, 5, group_pattern=PATIENT, val=0.25) == folds
    assert fold_splits(index, 5, seed=1, group_pattern=PATIENT)[0]["test"] != folds[0]["test"]
    # groups follow nnU-Net's KFold over the sorted group keys
    perm = np.random.RandomState(12345).permutation(10)
    assert {case_group(c, PATIENT) for c in folds[0]["test"]} == {f"patient{i + 1:03d}" for i in perm[:2]}


def test_make_split_selects_a_fold(acdc_like):
    index = read_dataset(acdc_like)
    cfg = SplitConfig(folds=3, fold=2, val=0.0, group_pattern=PATIENT)
    assert make_split(index, cfg) == fold_splits(index, 3, group_pattern=PATIENT)[2]
    assert make_split(index, cfg)["val"] == []


def test_leave_one_site_out(multisite):
    index = read_dataset(multisite)
    assert index.sites == ["S0", "S1", "S2"]
    splits = site_splits(index, val=0.2, seed=0)
    assert list(splits) == ["S0", "S1", "S2"]
    site_of = {c.case_id: c.site for c in index.cases}
    for site, split in splits.items():
        assert {site_of[c] for c in split["test"]} == {site}
        assert len(split["test"]) == 3
        assert site not in {site_of[c] for c in split["train"] + split["val"]}
        assert len(split["train"]) + len(split["val"]) == 6 and len(split["val"]) == 1
    single = read_dataset(_dataset(multisite.parent / "single", patients=3, frames=1))
    with pytest.raises(ConfigError, match="at least 2 sites"):
        site_splits(single)


def test_training_fraction_is_seeded_grouped_and_a_subset(acdc_like):
    ids = sorted(c.case_id for c in read_dataset(acdc_like).cases)
    half = subsample_cases(ids, 0.5, seed=3, group_pattern=PATIENT)
    assert len(half) == 10 and set(half) <= set(ids)
    assert len({case_group(c, PATIENT) for c in half}) == 5
    assert subsample_cases(ids, 0.5, seed=3, group_pattern=PATIENT) == half
    assert subsample_cases(ids, 0.5, seed=4, group_pattern=PATIENT) != half
    assert subsample_cases(ids, 1.0, seed=3) == ids


def test_assign_sites_balanced_seeded_and_grouped():
    ids = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 12) for f in (1, 2)]
    a = assign_sites(ids, k=4, seed=0, group_pattern=PATIENT)
    assert a == assign_sites(ids, k=4, seed=0, group_pattern=PATIENT)
    assert a != assign_sites(ids, k=4, seed=1, group_pattern=PATIENT)
    per_site = [sum(1 for s in a.values() if s == f"site{i}") for i in range(1, 5)]
    assert per_site == [6, 6, 6, 4]  # 11 patients dealt round robin: 3, 3, 3, 2 patients of 2 frames
    for p in range(1, 12):
        assert a[f"patient{p:03d}_frame01"] == a[f"patient{p:03d}_frame02"]
    with pytest.raises(ConfigError, match="5 sites but only 4"):
        assign_sites(ids[:8], k=5, group_pattern=PATIENT)


def test_simulated_sites_record_profiles_and_change_images_deterministically(tmp_path):
    root = _dataset(tmp_path / "ds", patients=6, frames=1, channels=2)
    index = read_dataset(root)
    sim = simulate_sites(index, k=3, seed=7)
    record = sim.meta["simulated_sites"]
    assert record["k"] == 3 and record["seed"] == 7 and record["simulated"] is True
    assert [p["name"] for p in record["profiles"]] == ["site1", "site2", "site3"]
    assert set(record["profiles"][0]) >= {"gamma", "noise_std", "bias_strength", "blur_sigma", "resolution"}
    assert record["cases_per_site"] == {"site1": 2, "site2": 2, "site3": 2}
    assert sim.sites == ["site1", "site2", "site3"] and index.sites == []  # the original index is untouched
    case = sim.cases[0]
    raw, _, _ = load_case(index.cases[0], [0, 1], index=index)
    img1, lab1, _ = load_case(case, [0, 1], index=sim)
    img2, lab2, _ = load_case(case, [0, 1], index=sim)
    np.testing.assert_array_equal(img1, img2)  # same image at every load
    np.testing.assert_array_equal(lab1, lab2)
    assert not np.allclose(img1, raw)  # the site changed it
    only_second, _, _ = load_case(case, [1], index=sim)  # noise fixed per dataset channel, not per position
    np.testing.assert_array_equal(only_second[0], img1[1])
    again = simulate_sites(index, k=3, seed=7)
    assert again.meta == sim.meta and [c.site for c in again.cases] == [c.site for c in sim.cases]
    assert record["in_plane"] is True


def test_simulated_sites_keep_the_slices_of_a_stack_apart(tmp_path):
    """A site's blur and resolution act in-plane: changing one slice of a case never changes another."""
    root = _dataset(tmp_path / "ds", patients=3, frames=1)
    index = read_dataset(root)
    case = index.cases[0]
    image, affine = read_image(case.image_files[0])
    flipped = image.copy()
    flipped[..., 0] = image[::-1, :, 0]  # the same values: the volume's intensity range is unchanged
    loads = {}
    for in_plane in (True, False):
        sim = simulate_sites(index, k=3, seed=0, in_plane=in_plane)
        for name, array in (("original", image), ("flipped", flipped)):
            write_nifti(case.image_files[0], array, affine=affine)
            loads[in_plane, name] = load_case(sim.case(case.case_id), [0], index=sim)[0][0]
    for in_plane in (True, False):
        before, after = loads[in_plane, "original"], loads[in_plane, "flipped"]
        assert not np.allclose(before[..., 0], after[..., 0])
        assert np.array_equal(before[..., 1:], after[..., 1:]) is in_plane


def test_simulated_sites_refuse_a_multisite_dataset(multisite):
    with pytest.raises(ConfigError, match="already has sites"):
        simulate_sites(read_dataset(multisite), k=2)
