"""The quality benchmark's committed teacher fixture is the teacher its results describe (real ACDC data).

``benchmarks/quality/fixtures/teacher_unet16_acdc128.safetensors`` (fp16) must load into the benchmark's
``monai.UNet`` through medkd's teacher loader and reach the field's level on ACDC's test split at 128 x 128
(the results report 0.860 mean foreground Dice): a stale or wrong fixture would make every machine reproduce a
different table. Takes about 40 s (the compact copy of ACDC, then 40 test volumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ACDC = ROOT / ".." / "shared" / "data" / "acdc"
FIXTURE = ROOT / "benchmarks" / "quality" / "fixtures" / "teacher_unet16_acdc128.safetensors"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not ACDC.is_dir(), reason=f"ACDC not found at {ACDC}"),
]


def test_fixture_teacher_reaches_its_reported_test_dice(tmp_path):
    from medkd.config import ModelConfig, TeacherConfig, parse_config
    from medkd.data.compact import write_compact_copy
    from medkd.data.loader import open_dataset
    from medkd.data.pipeline import prepare_cases
    from medkd.inference import predict_volume
    from medkd.teachers import load_teacher

    data = tmp_path / "acdc128"
    write_compact_copy(ACDC, data, (128, 128), "uint8")
    kwargs = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
    teacher = load_teacher(TeacherConfig(model=ModelConfig(name="monai.UNet", kwargs=kwargs),
                                         checkpoint=str(FIXTURE)), 1, 4, 2)
    cfg = parse_config({"data": {"root": str(data), "size": [128, 128], "normalize": "zscore"},
                        "model": {"name": "monai.UNet"}})
    test_ids = json.loads((data / "splits.json").read_text())["test"]
    cases = prepare_cases(open_dataset(cfg.data), test_ids, [0], cfg.data)
    per_volume = []
    for case in cases:
        pred = predict_volume(teacher, case.image, 2, (128, 128)).argmax(0).numpy()
        ref = case.reference
        dice = [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c))
                for c in (1, 2, 3) if np.sum(ref == c) + np.sum(pred == c) > 0]
        per_volume.append(np.mean(dice))
    assert len(per_volume) == 40
    assert np.mean(per_volume) == pytest.approx(0.860, abs=0.01)
