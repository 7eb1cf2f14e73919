"""``medkd.weights``: the safetensors weights file, written atomically, read with clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from medkd.errors import MedkdError
from medkd.weights import load_model_weights, save_weights


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_weights_round_trip_with_shared_storage_split(tmp_path):
    model = _model()
    state = {**model.state_dict(), "alias": model[0].weight}  # two names, one storage: safetensors refuses that
    save_weights(tmp_path / "w.safetensors", state, {"note": "x"})
    assert sorted(load_file(str(tmp_path / "w.safetensors"))) == sorted(state)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left
    fresh = _model()
    torch.nn.init.zeros_(fresh[0].weight)
    load_model_weights(fresh, tmp_path / "w.safetensors", strict=False)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_weights_that_do_not_fit_are_missing_or_corrupt_name_the_file(tmp_path):
    save_weights(tmp_path / "best.safetensors", _model().state_dict())
    with pytest.raises(MedkdError, match="best.safetensors: weights do not fit the model"):
        load_model_weights(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3)), tmp_path / "best.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(MedkdError, match="junk.safetensors: not a readable safetensors checkpoint"):
        load_model_weights(_model(), tmp_path / "junk.safetensors")
    with pytest.raises(MedkdError, match="none.safetensors: checkpoint not found"):
        load_model_weights(_model(), tmp_path / "none.safetensors")
