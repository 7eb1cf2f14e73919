"""Help pages that render, and messages that point the right way (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
import yaml

from medkd.cli import app, main
from medkd.config import load_config
from medkd.errors import ConfigError


def _commands(cmd, path: list[str]):
    yield path
    if hasattr(cmd, "commands"):  # a group (typer may bring its own copy of click)
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, [*path, name])


def test_bench_help_pages_render(capsys):
    """`[/ compiled]` in a docstring was read as rich markup and crashed both pages."""
    assert main(["bench", "--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["bench", "train", "--help"]) == 0
    assert "--compile" in capsys.readouterr().out


def test_every_help_page_renders(capsys):
    paths = list(_commands(typer.main.get_command(app), []))
    assert ["bench", "train"] in paths and ["train"] in paths
    for path in paths:
        assert main([*path, "--help"]) == 0, path
        capsys.readouterr()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x", "dim": 2, "size": [32, 32]}, "model": {"name": "enet"}}))
    return path


@pytest.mark.parametrize("item, message", [
    ("train.epochs=abc", r"^--set train.epochs=abc: config key 'train.epochs': Input should be a valid integer"),
    ("train.epoch=3", r"^--set train.epoch=3: unknown config key 'train.epoch'; did you mean 'train.epochs'"),
    ("train={epochs: 0}", r"^--set train={epochs: 0}: config key 'train.epochs'"),
    ("train.epochs=[1", r"^--set train.epochs=\[1: the value is not valid YAML"),
    ("data.size=[32]", r"^\S+run.yaml with --set data.size=\[32\]: config key 'data': .*data.size has 1 values"),
])
def test_set_errors_name_the_set_item(config_file, item, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config_file, ["train.batch_size=2", item])
    assert "\n" not in str(info.value)


def test_file_errors_still_name_the_file(config_file):
    config_file.write_text(yaml.safe_dump({"data": {"root": "x"}, "model": {"name": "enet"},
                                           "train": {"epochs": "many"}}))
    with pytest.raises(ConfigError, match=rf"^{config_file}: config key 'train.epochs'"):
        load_config(config_file, ["train.batch_size=2"])


def test_cli_set_error_names_the_set_item(config_file, capsys):
    assert main(["train", str(config_file), "--set", "train.epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.epochs=abc: ") and err.count("\n") == 1


def test_data_check_says_no_class_is_absent(tmp_path, capsys):
    """Every class in every case used to print 'absent: every class in every case'."""
    from medkd.data.nifti_io import write_nifti

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "ct"},
                                                   "labels": {"background": 0, "a": 1, "b": 2},
                                                   "file_ending": ".nii.gz"}))
    for i in range(2):
        image = np.random.default_rng(i).uniform(1, 2, size=(8, 7, 5)).astype(np.float32)
        label = np.zeros((8, 7, 5), np.uint8)
        label[2:4], label[4:6] = 1, 2
        write_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", label)
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    absent = [line for line in out.splitlines() if line.startswith("absent:")]
    assert absent == ["absent:   none (every class is present in all 2 cases)"]
