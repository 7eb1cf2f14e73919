"""The format registry and the shared helpers of formats_base; the format and split modules import no loop."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import medkd.data
from medkd.data import folds, protocols, splits
from medkd.data.formats import FORMAT_READERS, FORMATS, detect_format, list_formats, read_dataset
from medkd.data.formats_base import (
    Case,
    DatasetIndex,
    channel_names,
    labels_from_json,
    load_dataset_json,
    read_sites,
    register_format,
)
from medkd.errors import ConfigError, DataError

DATA_DIR = Path(medkd.data.__file__).parent


def _medkd_imports(module: str) -> set[str]:
    tree = ast.parse((DATA_DIR / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medkd"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("medkd"))
    return out


@pytest.mark.parametrize("plugin", ["nnunet_msd", "png_pairs", "site_folders"])
def test_format_plugins_import_the_base_module_only(plugin: str):
    imports = _medkd_imports(plugin)
    assert "medkd.data.formats_base" in imports
    assert not imports & {"medkd.data.formats", "medkd.data.png_pairs", "medkd.data.site_folders",
                          "medkd.data.nnunet_msd"}


def test_splits_and_protocols_share_the_grouping_module():
    assert "medkd.data.protocols" not in _medkd_imports("splits")
    assert "medkd.data.folds" in _medkd_imports("splits") and "medkd.data.folds" in _medkd_imports("protocols")
    assert splits.case_group is folds.case_group and protocols.fold_splits is folds.fold_splits
    ids = ["p2_a", "p1_b", "p1_a", "solo"]
    assert folds.group_cases(ids, r"p\d") == [["p1_a", "p1_b"], ["p2_a"], ["solo"]]
    assert folds.group_cases(ids, None) == [["p1_a"], ["p1_b"], ["p2_a"], ["solo"]]


def test_detection_order_and_former_name():
    assert list_formats() == ["nnunet", "msd", "png_pairs", "site_folders"]
    assert FORMAT_READERS is FORMATS and set(FORMAT_READERS) == set(list_formats())
    assert FORMATS.meta("msd")["order"] == 20 and callable(FORMATS.meta("msd")["detector"])


def test_a_registered_format_is_detected_by_its_order_and_read(tmp_path: Path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "mine.txt").write_text("a\nb\n")

    @register_format("test_mine", lambda r: (r / "mine.txt").is_file(), order=5)
    def read_mine(r: Path) -> DatasetIndex:
        cases = [Case(name, (r / f"{name}.nii.gz",), None) for name in (r / "mine.txt").read_text().split()]
        return DatasetIndex(r, "test_mine", ["gray"], {"bg": 0, "fg": 1}, cases)

    try:
        assert list_formats()[0] == "test_mine" and detect_format(root) == "test_mine"
        index = read_dataset(root)
        assert index.format == "test_mine" and [c.case_id for c in index.cases] == ["a", "b"]
    finally:
        FORMATS.unregister("test_mine")
    with pytest.raises(DataError, match=r"not a recognised dataset folder \(formats: nnunet, msd, png_pairs, "
                                        r"site_folders\)"):
        detect_format(root)
    with pytest.raises(ConfigError, match=r"^unknown dataset format 'test_mine'"):
        read_dataset(root, format="test_mine")


def test_dataset_json_helpers(tmp_path: Path):
    path = tmp_path / "dataset.json"
    assert load_dataset_json(tmp_path, required=False) == {}
    with pytest.raises(DataError, match=r"dataset.json: dataset.json not found"):
        load_dataset_json(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"dataset.json: expected a JSON object"):
        load_dataset_json(tmp_path)
    assert labels_from_json({"labels": {"background": 0, "tumour": [1, 2]}}, path) == {"background": 0, "tumour": 2}
    assert labels_from_json({"labels": {"1": "edema", "0": "background"}}, path) == {"background": 0, "edema": 1}
    with pytest.raises(DataError, match=r"label entry 'x': 'y' is neither"):
        labels_from_json({"labels": {"x": "y"}}, path)
    assert channel_names({"modality": {"1": "T1", "0": "FLAIR"}}, path) == ["FLAIR", "T1"]
    with pytest.raises(DataError, match=r"channel keys must be integers, got \['a'\]"):
        channel_names({"channel_names": {"a": "CT"}}, path)
    assert read_sites(tmp_path) == {}
    (tmp_path / "sites.json").write_text(json.dumps({"cases": {"c1": "A", "c2": 3}}))
    assert read_sites(tmp_path) == {"c1": "A", "c2": "3"}
