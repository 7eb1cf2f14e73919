"""``medkd evaluate --without-sites``: the same cases without their simulated acquisition."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import medkd.evaluate.runner as runner_mod
from medkd.cli import main
from medkd.data.formats import read_dataset
from medkd.data.pipeline import load_case
from medkd.errors import MedkdError
from medkd.evaluate.runner import evaluate_run


@pytest.fixture
def siteless(synth2d, tmp_path):
    """The synthetic 2D cases as one acquisition (its sites.json removed), so sites can be simulated on it."""
    root = tmp_path / "siteless"
    shutil.copytree(synth2d, root)
    (root / "sites.json").unlink()
    return root


def _seen_images(monkeypatch) -> list[np.ndarray]:
    """Record the image of every case handed to the network by the evaluation."""
    seen: list[np.ndarray] = []
    real = runner_mod.predict_volume

    def recording(model, image, *args, **kwargs):
        seen.append(np.array(image))
        return real(model, image, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "predict_volume", recording)
    return seen


def test_without_sites_scores_the_raw_cases_into_their_own_folder(siteless, tmp_path, make_run_config,
                                                                  untrained_run, monkeypatch):
    cfg = make_run_config(siteless, data={"root": str(siteless), "dim": 2, "size": [32, 32], "normalize": "minmax",
                                          "simulate_sites": {"k": 2, "seed": 0},
                                          "split": {"val": 0.2, "test": 0.2, "seed": 0}})
    run = untrained_run(cfg, tmp_path / "run")
    seen = _seen_images(monkeypatch)
    plain = evaluate_run(run.path, "test", "cpu", progress=False)
    n = plain["n_cases"]
    clean = evaluate_run(run.path, "test", "cpu", progress=False, without_sites=True)
    assert plain["without_sites"] is False and clean["without_sites"] is True and clean["n_cases"] == n
    on_disk = json.loads((run.path / "evaluation" / "test-without-sites" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(clean))
    assert json.loads((run.path / "evaluation" / "summary.json").read_text())["without_sites"] is False
    index = read_dataset(siteless)
    test_ids = run.split()["test"]
    for cid, simulated, raw_seen in zip(test_ids, seen[:n], seen[n:]):
        raw, _, _ = load_case(index.case(cid), [0], index=index)
        lo, hi = raw.min(), raw.max()
        np.testing.assert_allclose(raw_seen, (raw - lo) / (hi - lo), atol=1e-5)  # the file's own intensities
        assert not np.allclose(simulated, raw_seen, atol=1e-3)  # the plain evaluation saw the simulated site


def test_without_sites_refuses_a_run_without_simulated_sites(synth2d, tmp_path, make_run_config, untrained_run,
                                                             capsys):
    run = untrained_run(make_run_config(synth2d), tmp_path / "run")
    with pytest.raises(MedkdError, match="--without-sites needs a run trained with data.simulate_sites"):
        evaluate_run(run.path, "test", "cpu", progress=False, without_sites=True)
    assert main(["evaluate", str(run.path), "--without-sites", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--without-sites" in err and "Traceback" not in err
    assert not (run.path / "evaluation").exists()
