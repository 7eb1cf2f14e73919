from __future__ import annotations

import pytest

from medkd.config import apply_overrides, load_config, parse_config
from medkd.errors import ConfigError

BASE = {"data": {"root": "x", "dim": 2, "size": [32, 32]}, "model": {"name": "enet"}}


def test_minimal_config_gets_defaults():
    cfg = parse_config(BASE)
    assert cfg.train.epochs == 10
    assert cfg.data.normalize == "zscore"
    assert cfg.distill is None


def test_unknown_top_level_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean 'train'"):
        parse_config({**BASE, "trian": {}})


def test_unknown_nested_key_gets_dotted_suggestion():
    data = {**BASE, "train": {"optimiser": {"lr": 0.1}}}
    with pytest.raises(ConfigError, match=r"'train.optimiser'; did you mean 'train.optimizer'"):
        parse_config(data)


def test_invalid_value_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "train": {"epochs": 0}})
    msg = str(info.value)
    assert "train.epochs" in msg and "\n" not in msg


def test_size_must_match_dim():
    with pytest.raises(ConfigError, match="data.size has 2 values but data.dim is 3"):
        parse_config({**BASE, "data": {"root": "x", "dim": 3, "size": [32, 32]}})


def test_teacher_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of 'run' or 'model'"):
        parse_config({**BASE, "distill": {"teacher": {}, "terms": []}})


def test_overrides_parse_yaml_values():
    data = apply_overrides(BASE, ["train.epochs=3", "train.optimizer.lr=1e-4", "data.size=[16, 16]"])
    cfg = parse_config(data)
    assert cfg.train.epochs == 3 and cfg.train.optimizer.lr == pytest.approx(1e-4) and cfg.data.size == [16, 16]
    assert BASE["data"]["size"] == [32, 32]  # input not mutated


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(BASE, ["train.epochs"])


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
