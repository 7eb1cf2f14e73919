"""Tests of medkd.evaluate.metrics: hand-computed overlaps, HD95 distances, empty masks, summaries, CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from medkd.errors import ConfigError, DataError
from medkd.evaluate.metrics import (
    BRATS_REGIONS,
    METRICS,
    binary_metrics,
    case_metrics,
    region_masks,
    summarize,
    write_per_case_csv,
)


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Independent, slow HD95: surface voxels (mask minus its erosion), all pairwise distances."""

    def surface(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing, dtype=np.float64)

    pa, pb = surface(a), surface(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_hand_computed_2d():
    # pred covers 3 pixels, ref covers 3, two of them shared: Dice = 2*2/(3+3), IoU = 2/4.
    pred = np.zeros((4, 4), dtype=np.int64)
    ref = np.zeros((4, 4), dtype=np.int64)
    pred[1, 1:4] = 1
    ref[1, 0:3] = 1
    m = case_metrics(pred, ref, {"fg": 1})["fg"]
    assert m["status"] == "ok"
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert (m["ref_voxels"], m["pred_voxels"]) == (3, 3)
    # 1-pixel lines shifted by one column: each direction has surface distances [0, 0, 1], whose
    # 95th percentile (linear interpolation, position 0.95 * 2 = 1.9) is 0.9.
    assert m["hd95"] == pytest.approx(0.9, abs=1e-6)


def test_hand_computed_multiclass_3d():
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[0:2] = 1  # 32 voxels of class 1
    pred[0:1] = 1  # 16 of them predicted as 1
    pred[1, :2] = 2  # 8 predicted as 2 instead
    ref[3, 0, 0] = 2  # 1 voxel of class 2
    pred[3, 0, 0] = 2
    m = case_metrics(pred, ref, {"a": 1, "b": 2, "ab": [1, 2]})
    assert m["a"]["dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert m["a"]["precision"] == pytest.approx(1.0)
    assert m["a"]["recall"] == pytest.approx(0.5)
    assert m["b"]["dice"] == pytest.approx(2 * 1 / (9 + 1))
    assert m["b"]["iou"] == pytest.approx(1 / 9)
    assert m["b"]["precision"] == pytest.approx(1 / 9)
    assert m["b"]["recall"] == pytest.approx(1.0)
    # The union region: 33 reference voxels, 25 predicted, all predicted ones correct.
    assert m["ab"]["dice"] == pytest.approx(2 * 25 / (25 + 33))
    assert m["ab"]["precision"] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(24, 20), (10, 12, 14)])
def test_overlap_matches_monai(shape):
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(0)
    ref = ndimage.uniform_filter(rng.random(shape), 3)
    ref = np.digitize(ref, [0.45, 0.5, 0.55])  # labels 0..3 in smooth blobs
    pred = np.where(rng.random(shape) < 0.15, rng.integers(0, 4, shape), ref)
    labels = {"c1": 1, "c2": 2, "c3": 3}
    m = case_metrics(pred, ref, labels)
    oh = lambda x: torch.from_numpy(np.stack([x == v for v in range(4)])[None].astype(np.float32))
    dice = compute_dice(oh(pred), oh(ref), include_background=False)[0]
    iou = compute_iou(oh(pred), oh(ref), include_background=False)[0]
    for i, name in enumerate(labels):
        assert m[name]["status"] == "ok"
        assert m[name]["dice"] == pytest.approx(float(dice[i]), abs=1e-6)
        assert m[name]["iou"] == pytest.approx(float(iou[i]), abs=1e-6)
        p, r = pred == i + 1, ref == i + 1
        assert m[name]["precision"] == pytest.approx((p & r).sum() / p.sum())
        assert m[name]["recall"] == pytest.approx((p & r).sum() / r.sum())
        assert m[name]["hd95"] == pytest.approx(_brute_hd95(p, r, [1.0] * len(shape)), abs=1e-4)


def test_regions_brats():
    label = np.array([[0, 1, 2], [3, 4, 4]])
    masks = region_masks(label, BRATS_REGIONS)
    assert set(masks) == {"WT", "TC", "ET"}
    np.testing.assert_array_equal(masks["WT"], label > 0)
    np.testing.assert_array_equal(masks["TC"], np.isin(label, [1, 3, 4]))
    np.testing.assert_array_equal(masks["ET"], label == 4)
    assert region_masks(label, {"one": 2})["one"].sum() == 1

    ref = np.zeros((6, 6, 6), dtype=np.int64)
    ref[1:5, 1:5, 1:5] = 2  # oedema
    ref[2:4, 2:4, 2:4] = 1  # necrotic core
    ref[2:4, 2:4, 3] = 4  # enhancing
    pred = ref.copy()
    pred[pred == 1] = 2  # core missed, called oedema
    m = case_metrics(pred, ref, BRATS_REGIONS)
    assert m["WT"]["dice"] == pytest.approx(1.0) and m["WT"]["hd95"] == pytest.approx(0.0)
    assert m["ET"]["dice"] == pytest.approx(1.0)
    # TC: ref = 8 voxels (4 necrotic + 4 enhancing), pred = the 4 enhancing ones.
    assert m["TC"]["dice"] == pytest.approx(2 * 4 / (4 + 8))
    assert m["TC"]["recall"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [(1, None, 2.0), (1, (1.0, 3.0), 6.0), (0, (2.5, 1.0), 5.0), (1, (2.5, 1.0), 2.0), (0, 0.5, 1.0)],
)
def test_hd95_shifted_squares(axis, spacing, expected):
    # Two 6x6 squares, the second shifted by 2 voxels along `axis`: every surface voxel is at most
    # 2 voxels (along that axis) from the other surface and a whole side (> 5% of it) is exactly that far.
    a = np.zeros((14, 14), dtype=np.int64)
    a[3:9, 3:9] = 1
    b = np.roll(a, 2, axis=axis)
    m = case_metrics(b, a, {"sq": 1}, spacing=spacing)["sq"]
    assert m["hd95"] == pytest.approx(expected, abs=1e-5)
    assert m["dice"] == pytest.approx(2 / 3)
    per_axis = (1.0, 1.0) if spacing is None else np.broadcast_to(spacing, (2,))
    assert m["hd95"] == pytest.approx(_brute_hd95(b == 1, a == 1, per_axis), abs=1e-5)


def test_hd95_3d_anisotropic_matches_brute_force():
    a = np.zeros((10, 12, 12), dtype=bool)
    a[2:7, 3:9, 2:8] = True
    b = np.roll(a, 1, axis=0)  # shift along the slice axis (3 mm)
    m = binary_metrics(b, a, spacing=(3.0, 0.8, 0.8))
    assert m["hd95"] == pytest.approx(3.0, abs=1e-5)
    rng = np.random.default_rng(3)
    c = ndimage.binary_dilation(rng.random(a.shape) > 0.97, iterations=1)
    m2 = binary_metrics(c, a, spacing=(3.0, 0.8, 1.2))
    assert m2["hd95"] == pytest.approx(_brute_hd95(c, a, (3.0, 0.8, 1.2)), abs=1e-4)


def test_empty_statuses():
    z = np.zeros((5, 5), dtype=np.int64)
    one = z.copy()
    one[2, 2] = 1
    both = binary_metrics(z, z)
    assert both["status"] == "both_empty"
    assert all(both[k] is None for k in METRICS)
    assert (both["ref_voxels"], both["pred_voxels"]) == (0, 0)

    fp = binary_metrics(one, z)  # prediction only: false positives
    assert fp["status"] == "ref_empty"
    assert (fp["dice"], fp["iou"], fp["precision"]) == (0.0, 0.0, 0.0)
    assert fp["recall"] is None and fp["hd95"] is None
    assert (fp["ref_voxels"], fp["pred_voxels"]) == (0, 1)

    fn = binary_metrics(z, one)  # reference only: missed
    assert fn["status"] == "pred_empty"
    assert (fn["dice"], fn["iou"], fn["recall"]) == (0.0, 0.0, 0.0)
    assert fn["precision"] is None and fn["hd95"] is None

    disjoint = binary_metrics(one, np.roll(one, 2, axis=0))
    assert disjoint["status"] == "ok" and disjoint["dice"] == 0.0 and disjoint["precision"] == 0.0
    assert disjoint["hd95"] == pytest.approx(2.0)


def test_input_errors():
    a = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(DataError, match="shape"):
        case_metrics(a, np.zeros((4, 5)), {"fg": 1})
    with pytest.raises(ConfigError, match="labels"):
        case_metrics(a, a, {"fg": []})
    with pytest.raises(ConfigError, match="integers"):
        case_metrics(a, a, {"fg": [1.5]})
    with pytest.raises(DataError, match="spacing"):
        case_metrics(a, a, {"fg": 1}, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="2D or 3D"):
        binary_metrics(np.zeros(4), np.zeros(4))


def _rec(case, site, **classes):
    return {"case": case, "site": site, "metrics": dict(classes)}


def _m(dice, hd95=1.0, status="ok"):
    if status == "both_empty":
        return {k: None for k in METRICS} | {"status": status, "ref_voxels": 0, "pred_voxels": 0}
    return {
        "dice": dice,
        "iou": dice / (2 - dice),
        "precision": dice,
        "recall": dice,
        "hd95": hd95,
        "status": status,
        "ref_voxels": 10,
        "pred_voxels": 10,
    }


@pytest.fixture
def records():
    return [
        _rec("c1", "A", background=_m(0.99), lv=_m(0.9, 2.0), rv=_m(0.7, 4.0)),
        _rec("c2", "A", background=_m(0.98), lv=_m(0.8, 3.0), rv=_m(None, status="both_empty")),
        _rec("c3", "B", background=_m(0.97), lv=_m(0.6, 5.0), rv=_m(0.0, None, status="pred_empty")),
    ]


def test_summarize_by_hand(records):
    s = summarize(records)
    assert s["n_cases"] == 3
    assert s["foreground_classes"] == ["lv", "rv"]
    lv = s["classes"]["lv"]["dice"]
    assert lv["mean"] == pytest.approx(np.mean([0.9, 0.8, 0.6]))
    assert lv["std"] == pytest.approx(np.std([0.9, 0.8, 0.6], ddof=1))
    assert lv["median"] == pytest.approx(0.8)
    assert (lv["n"], lv["n_both_empty"], lv["n_undefined"]) == (3, 0, 0)
    rv = s["classes"]["rv"]
    # Both-empty case c2 is left out of the mean and counted; the missed case c3 counts as Dice 0.
    assert rv["dice"]["mean"] == pytest.approx(0.35)
    assert rv["dice"]["std"] == pytest.approx(np.std([0.7, 0.0], ddof=1))
    assert (rv["dice"]["n"], rv["dice"]["n_both_empty"], rv["dice"]["n_undefined"]) == (2, 1, 0)
    assert rv["hd95"]["mean"] == pytest.approx(4.0) and rv["hd95"]["std"] == 0.0
    assert (rv["hd95"]["n"], rv["hd95"]["n_both_empty"], rv["hd95"]["n_undefined"]) == (1, 1, 1)
    assert rv["status_counts"] == {"ok": 1, "ref_empty": 0, "pred_empty": 1, "both_empty": 1}
    # foreground mean: per case mean of lv and rv values available, background excluded.
    fg = s["foreground_mean"]["dice"]
    case_means = [(0.9 + 0.7) / 2, 0.8, (0.6 + 0.0) / 2]
    assert fg["mean"] == pytest.approx(np.mean(case_means))
    assert fg["std"] == pytest.approx(np.std(case_means, ddof=1))
    assert fg["n"] == 3
    assert s["foreground_mean"]["hd95"]["mean"] == pytest.approx(np.mean([3.0, 3.0, 5.0]))
    assert "groups" not in s
    json.dumps(s, allow_nan=False)  # NaN-free, plain JSON types


def test_summarize_groups(records):
    s = summarize(records, group_key="site")
    assert s["group_key"] == "site" and list(s["groups"]) == ["A", "B"]
    a, b = s["groups"]["A"], s["groups"]["B"]
    assert a["n_cases"] == 2 and b["n_cases"] == 1
    assert a["classes"]["lv"]["dice"]["mean"] == pytest.approx(0.85)
    assert a["classes"]["rv"]["dice"]["n"] == 1 and a["classes"]["rv"]["dice"]["n_both_empty"] == 1
    assert a["classes"]["rv"]["dice"]["std"] == 0.0  # a single case
    assert b["classes"]["rv"]["hd95"]["mean"] is None and b["classes"]["rv"]["hd95"]["n"] == 0
    assert b["foreground_mean"]["dice"]["mean"] == pytest.approx(0.3)
    json.dumps(s, allow_nan=False)
    with pytest.raises(DataError, match="scanner"):
        summarize(records, group_key="scanner")
    with pytest.raises(DataError, match="more than once"):
        summarize(records + records[:1])


def test_summarize_all_both_empty_is_none():
    recs = [
        _rec("c1", "A", et=_m(None, status="both_empty")),
        _rec("c2", "A", et=_m(None, status="both_empty")),
    ]
    s = summarize(recs)
    d = s["classes"]["et"]["dice"]
    assert d["mean"] is None and d["std"] is None and d["median"] is None and d["n"] == 0
    assert d["n_both_empty"] == 2
    assert s["foreground_mean"]["dice"]["n_both_empty"] == 2
    json.dumps(s, allow_nan=False)


def test_end_to_end_with_real_metrics(tmp_path):
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[2:6, 2:6] = 1
    cases = {"x": ref.copy(), "y": np.roll(ref, 1, axis=1)}
    recs = [
        {"case": k, "site": "s", "metrics": case_metrics(p, ref, {"bg": 0, "fg": 1, "ghost": 2})}
        for k, p in cases.items()
    ]
    s = summarize(recs, group_key="site")
    assert s["foreground_classes"] == ["fg", "ghost"]
    assert s["classes"]["fg"]["dice"]["mean"] == pytest.approx((1.0 + 0.75) / 2)
    assert s["classes"]["ghost"]["dice"]["n_both_empty"] == 2
    assert s["foreground_mean"]["dice"]["mean"] == pytest.approx((1.0 + 0.75) / 2)
    path = write_per_case_csv(recs, tmp_path / "evaluation" / "per_case.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert rows[0]["case"] == "x" and rows[0]["site"] == "s" and rows[0]["class"] == "bg"
    fg_y = next(r for r in rows if r["case"] == "y" and r["class"] == "fg")
    assert float(fg_y["dice"]) == pytest.approx(0.75) and fg_y["status"] == "ok"
    assert float(fg_y["hd95"]) == pytest.approx(1.0)
    ghost = next(r for r in rows if r["class"] == "ghost")
    assert ghost["status"] == "both_empty" and ghost["dice"] == "" and ghost["hd95"] == ""
    assert list(rows[0]) == [
        "case",
        "site",
        "class",
        "dice",
        "iou",
        "precision",
        "recall",
        "hd95",
        "status",
        "ref_voxels",
        "pred_voxels",
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_case.csv"]  # no temp file left behind
