"""check_resume_config: only RESUME_FREE_KEYS may change; config_text is what save_config writes."""

from __future__ import annotations

import pytest

from medkd.config import save_config
from medkd.errors import ConfigError
from medkd.run import RESUME_FREE_KEYS, SPLIT_KEYS, check_resume_config, config_text, resolve_paths


def test_free_keys_may_change_and_the_saved_config_is_returned(built_run):
    saved = built_run.config()
    more = saved.model_copy(deep=True)
    more.train.epochs = 9
    more.name = "renamed"
    got = check_resume_config(built_run.path, more)
    assert got is not None and got.train.epochs == 2 and got.name == "tiny"
    assert "train.epochs" in RESUME_FREE_KEYS and "classes" in SPLIT_KEYS


def test_other_keys_are_refused_naming_the_key(built_run):
    other = built_run.config().model_copy(deep=True)
    other.model.name = "enet"
    with pytest.raises(ConfigError, match=r"^model\.name: the run was trained with unet_s1; a resume cannot change "
                                          r"it \(got enet\)"):
        check_resume_config(built_run.path, other)


def test_no_config_means_nothing_to_check(tmp_path, built_run):
    assert check_resume_config(tmp_path, built_run.config()) is None


def test_config_text_is_the_saved_file(built_run, tmp_path):
    cfg = built_run.config()
    save_config(cfg, tmp_path / "c.yaml")
    assert config_text(cfg) == (tmp_path / "c.yaml").read_text() == built_run.config_path.read_text()


def test_resolve_paths_makes_relative_paths_absolute(built_run, tmp_path):
    cfg = built_run.config().model_copy(deep=True)
    cfg.data.root = "data/here"
    resolved = resolve_paths(cfg, base=tmp_path)
    assert resolved.data.root == str((tmp_path / "data" / "here").resolve())
    assert cfg.data.root == "data/here"  # a copy: the input is unchanged
