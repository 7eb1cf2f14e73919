"""``medkd models`` (:mod:`medkd.bench.zoo`): the printed table, the JSON / markdown files, errors."""

from __future__ import annotations

import json

import pytest

from medkd.bench.zoo import models_cli
from medkd.errors import ConfigError


def test_models_cli_text_and_files(tmp_path):
    text = models_cli("unet_s*", efficiency=False, input_size="1x64x64")
    lines = text.splitlines()
    assert lines[0] == "models at input 1x64x64 (GFLOPs = 2 x MACs, batch 1)"
    assert lines[2].split()[:4] == ["unet_s1", "student", "2", "57,026"]
    text = models_cli("*", efficiency=False, input_size="1x32x32x32")
    assert "kdnet3d" in text and "not shown" in text and "enet" in text.splitlines()[-1]
    models_cli("unet_s1", efficiency=True, input_size="1x32x32", out=tmp_path / "eff.json", repeats=1)
    payload = json.loads((tmp_path / "eff.json").read_text())
    assert payload["rows"][0]["name"] == "unet_s1" and "latency_ms_median" in payload["rows"][0]
    assert payload["input"] == "1x32x32" and payload["machine"]["cpu"]
    assert (tmp_path / "eff.md").read_text().count("| unet_s1 |") == 1


def test_models_cli_folder_output(tmp_path):
    text = models_cli("unet_s2", input_size="1x32x32", out=tmp_path / "zoo")
    assert (tmp_path / "zoo" / "models.json").is_file() and (tmp_path / "zoo" / "models.md").is_file()
    assert text.endswith(f"wrote {tmp_path / 'zoo' / 'models.json'} and {tmp_path / 'zoo' / 'models.md'}\n")


def test_models_cli_errors():
    with pytest.raises(ConfigError, match="no model matches 'nothing\\*'"):
        models_cli("nothing*")
    with pytest.raises(ConfigError, match="input size '1x256'"):
        models_cli("*", input_size="1x256")
