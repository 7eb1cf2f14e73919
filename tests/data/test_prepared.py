"""The prepared-sample cache: same samples, same training, reused, invalidated, never half written."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from medkd.config import parse_config
from medkd.data import pipeline
from medkd.data.loader import build_bundle, build_train_source
from medkd.data.pipeline import TeacherCopy, prepare_cases, slice_samples
from medkd.data.prepared import cache_root, fingerprint, prepared_slices
from medkd.data.prepared_cases import prepared_cases
from medkd.errors import ConfigError, MedkdError
from medkd.run import RunFolder
from medkd.teachers.nnunet_norm import nnunet_normalization
from medkd.train.trainer import train


def _cfg(make_config, root, cache, **data):
    return parse_config(make_config(root, data={"root": str(root), "dim": 2, "size": [32, 32],
                                                "split": {"val": 0.2, "test": 0.2, "seed": 0},
                                                "prepared_dir": str(cache), **data},
                                    train={"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 3,
                                           "optimizer": {"name": "adam", "lr": 0.003}, "progress": False}))


def _folders(cache):
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".")) if cache.exists() else []


@pytest.fixture()
def loads(monkeypatch):
    """Case ids whose files the pipeline reads (``load_case``), in call order."""
    seen: list[str] = []
    real = pipeline.load_case

    def spy(case, *args, **kwargs):
        seen.append(case.case_id)
        return real(case, *args, **kwargs)

    monkeypatch.setattr(pipeline, "load_case", spy)
    return seen


def test_cached_samples_equal_the_computed_ones(synth2d, make_config, tmp_path, loads):
    cfg = _cfg(make_config, synth2d, tmp_path / "cache", foreground_slices_only=True)
    bundle = build_bundle(cfg)
    want = slice_samples(prepare_cases(bundle.index, bundle.split["train"], bundle.loaded_channels, cfg.data),
                         (32, 32), True)
    first = prepared_slices(cfg.data, bundle.index, bundle.split["train"], bundle.loaded_channels)
    loads.clear()
    again = prepared_slices(cfg.data, bundle.index, bundle.split["train"], bundle.loaded_channels)
    assert not first[3].reused and again[3].reused and again[3].folder == first[3].folder
    assert loads == []  # read back: no case file opened
    for got in (first, again):
        assert torch.equal(got[0], want[0]) and got[0].dtype == torch.float32
        assert torch.equal(got[1], want[1]) and got[1].dtype == torch.int64
        assert got[2] == want[2]
    idx = torch.tensor([3, 0, 5])
    source = build_train_source(cfg, bundle)
    images, labels = source.samples(idx, torch.Generator())
    assert torch.equal(images, want[0][idx]) and torch.equal(labels, want[1][idx])
    folder = again[3].folder
    assert {p.name for p in folder.iterdir()} == {"images.npy", "labels.npy", "index.json"}
    assert json.loads((folder / "index.json").read_text())["labels"]["dtype"] == "uint8"


def test_training_is_identical_with_and_without_the_cache_and_reuses_it(synth2d, make_config, tmp_path, loads):
    cache = tmp_path / "cache"
    runs = {}
    for name, mode in (("off", "off"), ("cold", "auto"), ("warm", "auto")):
        loads.clear()
        cfg = _cfg(make_config, synth2d, cache, prepared=mode)
        train(cfg, tmp_path / name, device="cpu")
        runs[name] = list(loads)
        if name == "off":
            assert _folders(cache) == []
    split = build_bundle(cfg).split
    train_ids, val_ids = set(split["train"]), set(split["val"])
    assert train_ids | val_ids <= set(runs["cold"]) and val_ids
    assert not (train_ids | val_ids) & set(runs["warm"])  # the second auto run read no training or val case
    assert len(_folders(cache)) == 2  # the training slices and the validation cases

    def steps(name):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in RunFolder(tmp_path / name).metrics()
                if r["kind"] in ("step", "epoch")]

    def weights(name):
        last = json.loads((tmp_path / name / "checkpoints" / "last.json").read_text())["dir"]
        return load_file(str(tmp_path / name / "checkpoints" / last / "model.safetensors"))

    assert steps("off") == steps("cold") == steps("warm") and steps("off")
    w_off, w_warm = weights("off"), weights("warm")
    assert w_off.keys() == w_warm.keys()
    assert all(torch.equal(w_off[k], w_warm[k]) for k in w_off)


def test_a_teachers_own_copy_is_part_of_the_fingerprint(synth2d, make_config, tmp_path, loads):
    cfg = _cfg(make_config, synth2d, tmp_path / "cache")
    bundle = build_bundle(cfg)
    ids, ch = bundle.split["train"], bundle.loaded_channels
    zscore = TeacherCopy((0,), nnunet_normalization(["ZScoreNormalization"], [False], {}, ["T2"], [0], 1, "t"))
    rescale = TeacherCopy((0,), nnunet_normalization(["RescaleTo01Normalization"], [False], {}, ["T2"], [0], 1, "t"))
    plain_fp, plain_facts = fingerprint(cfg.data, bundle.index, ids, ch)
    copy_fp, copy_facts = fingerprint(cfg.data, bundle.index, ids, ch, zscore)
    assert "teacher_copy" not in plain_facts and copy_facts["teacher_copy"]["positions"] == [0]
    assert copy_facts["teacher_copy"]["normalization"]["channels"][0]["scheme"] == "ZScoreNormalization"
    assert len({plain_fp, copy_fp, fingerprint(cfg.data, bundle.index, ids, ch, rescale)[0]}) == 3
    plain = prepared_slices(cfg.data, bundle.index, ids, ch)
    first = prepared_slices(cfg.data, bundle.index, ids, ch, teacher=zscore)
    loads.clear()
    again = prepared_slices(cfg.data, bundle.index, ids, ch, teacher=zscore)
    assert again[3].reused and loads == [] and first[3].folder.name == copy_fp != plain[3].folder.name
    assert plain[0].shape[1] == 1 and again[0].shape[1] == 2 and torch.equal(again[0], first[0])
    assert torch.equal(again[0][:, :1], plain[0])  # the student's channels are untouched by the copy
    assert torch.equal(again[1], plain[1]) and again[2] == plain[2]


def test_changed_file_or_size_makes_a_new_cache(synth2d, make_config, tmp_path, loads):
    data = tmp_path / "data"
    shutil.copytree(synth2d, data)
    cache = tmp_path / "cache"
    cfg = _cfg(make_config, data, cache)
    bundle = build_bundle(cfg)
    ids, ch = bundle.split["train"], bundle.loaded_channels
    first = prepared_slices(cfg.data, bundle.index, ids, ch)[3]
    assert prepared_slices(cfg.data, bundle.index, ids, ch)[3].reused
    # another size: another fingerprint
    other = _cfg(make_config, data, cache, size=[24, 24])
    got = prepared_slices(other.data, bundle.index, ids, ch)
    assert not got[3].reused and got[3].folder != first.folder and got[0].shape[-1] == 24
    # a training file rewritten (same bytes, new mtime): not trusted
    image = bundle.index.case(ids[0]).image_files[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    loads.clear()
    again = prepared_slices(cfg.data, bundle.index, ids, ch)[3]
    assert not again.reused and again.folder != first.folder and ids[0] in loads
    # a config key that only chooses batches shares the cache
    aug = _cfg(make_config, data, cache, augment={"flip": False}, train_fraction=0.9)
    assert prepared_slices(aug.data, bundle.index, ids, ch)[3].reused


def test_corrupt_or_half_written_cache_is_rebuilt(synth2d, make_config, tmp_path, loads):
    cache = tmp_path / "cache"
    cfg = _cfg(make_config, synth2d, cache)
    bundle = build_bundle(cfg)
    args = (cfg.data, bundle.index, bundle.split["train"], bundle.loaded_channels)
    want = prepared_slices(*args)
    folder = want[3].folder
    # one flipped value: rebuilt, same result
    raw = bytearray((folder / "images.npy").read_bytes())
    raw[-3] ^= 0xFF
    (folder / "images.npy").write_bytes(bytes(raw))
    got = prepared_slices(*args)
    assert not got[3].reused and torch.equal(got[0], want[0])
    # truncated labels, broken index: rebuilt
    (folder / "labels.npy").write_bytes((folder / "labels.npy").read_bytes()[:100])
    assert not prepared_slices(*args)[3].reused
    (folder / "index.json").write_text("{")
    assert not prepared_slices(*args)[3].reused
    assert prepared_slices(*args)[3].reused
    # a killed writer's temporary folder is ignored, never read
    (cache / f".{want[3].fingerprint[:16]}.abc.tmp").mkdir()
    assert prepared_slices(*args)[3].reused and len(_folders(cache)) == 1


def test_failed_write_leaves_no_folder(synth2d, make_config, tmp_path, monkeypatch, capsys):
    from medkd.data import prepared

    cache = tmp_path / "cache"
    cfg = _cfg(make_config, synth2d, cache)
    bundle = build_bundle(cfg)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepared.np, "save", boom)
    args = (cfg.data, bundle.index, bundle.split["train"], bundle.loaded_channels)
    with pytest.raises(MedkdError, match="data.prepared_dir: cannot write.*No space left"):
        prepared_slices(*args, must_write=True)
    assert list(cache.iterdir()) == []
    # a run goes on from memory with a note: the cache only saves time
    images, _, _, info = prepared_slices(*args)
    assert info.folder is None and images.shape[0] > 0
    assert "note: data.prepared_dir: cannot write" in capsys.readouterr().err
    assert list(cache.iterdir()) == []


def test_cache_folder_defaults_and_refuses_the_dataset_folder(synth2d, make_config, tmp_path, monkeypatch):
    cfg = _cfg(make_config, synth2d, tmp_path)
    monkeypatch.setenv("MEDKD_CACHE", str(tmp_path / "env"))
    assert cache_root(cfg.data.model_copy(update={"prepared_dir": None})) == tmp_path / "env" / "prepared"
    monkeypatch.delenv("MEDKD_CACHE")
    assert cache_root(cfg.data.model_copy(update={"prepared_dir": None})).parts[-3:] == (".cache", "medkd",
                                                                                         "prepared")
    inside = _cfg(make_config, synth2d, synth2d / "cache")
    bundle = build_bundle(inside)
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        prepared_slices(inside.data, bundle.index, bundle.split["train"], bundle.loaded_channels)
    assert not (synth2d / "cache").exists()


def test_cli_data_prepare_builds_then_reuses(synth2d, make_config, tmp_path, capsys, loads):
    import yaml

    from medkd.cli import app, main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_config(synth2d, data={"root": str(synth2d), "dim": 2, "size": [32, 32],
                                                                "split": {"val": 0.2, "test": 0.2}})))
    cache = tmp_path / "cache"
    runner = CliRunner()
    first = runner.invoke(app, ["data", "prepare", str(config), "--set", f"data.prepared_dir={cache}"])
    assert first.exit_code == 0, first.output
    folders = _folders(cache)  # the training slices and the whole validation cases
    assert len(folders) == 2 and all(str(f) in first.output for f in folders)
    assert first.output.count("MiB (written)") == 2 and "validation cases" in first.output
    second = runner.invoke(app, ["data", "prepare", str(config), "--set", f"data.prepared_dir={cache}"])
    assert second.exit_code == 0 and second.output.count("(reused)") == 2 and _folders(cache) == folders
    loads.clear()
    _, info = prepared_cases(*_val_args(make_config, synth2d, cache)[1])  # what a training run's validation reads
    assert info.reused and info.folder in folders and loads == []
    assert main(["data", "prepare", str(config), "--set", "data.prepared=off"]) == 2
    assert "data.prepared is off" in capsys.readouterr().err
    assert parse_config(make_config(synth2d, data={"root": str(synth2d), "prepared": False})).data.prepared == "off"


def _val_args(make_config, synth2d, cache, **data):
    cfg = _cfg(make_config, synth2d, cache, **data)
    bundle = build_bundle(cfg)
    return cfg, (cfg.data, bundle.index, bundle.split["val"], bundle.channels)


def _same_cases(got, want):
    assert [c.case_id for c in got] == [c.case_id for c in want] and len(got) > 0
    for a, b in zip(got, want):
        assert a.site == b.site and a.grid is None and a.original_label is None
        for x, y in ((a.image, b.image), (a.label, b.label), (a.affine, b.affine)):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_val_cases_read_back_bit_identical(synth2d, make_config, tmp_path, loads):
    cfg, args = _val_args(make_config, synth2d, tmp_path / "cache")
    want = prepare_cases(args[1], args[2], args[3], cfg.data)
    first, info1 = prepared_cases(*args)
    loads.clear()
    again, info2 = prepared_cases(*args)
    assert not info1.reused and info2.reused and info2.folder == info1.folder and loads == []
    _same_cases(first, want)
    _same_cases(again, want)
    slices_fp = fingerprint(cfg.data, args[1], args[2], args[3])[0]
    assert info2.fingerprint != slices_fp  # a case folder never collides with a slice folder
    assert json.loads((info2.folder / "index.json").read_text())["cases"][0]["label"]["dtype"] == "uint8"


def test_val_cases_damaged_folder_is_rebuilt_and_off_writes_nothing(synth2d, make_config, tmp_path, loads):
    cfg, args = _val_args(make_config, synth2d, tmp_path / "cache")
    want, info = prepared_cases(*args)
    victim = info.folder / "image_0000.npy"
    arr = np.load(victim)
    arr.flat[0] += 1.0
    np.save(victim, arr)  # same shape and dtype, other content
    got, again = prepared_cases(*args)
    assert not again.reused
    _same_cases(got, want)
    assert prepared_cases(*args)[1].reused
    off_cache = tmp_path / "off"
    _, off_args = _val_args(make_config, synth2d, off_cache, prepared="off")
    _same_cases(prepared_cases(*off_args)[0], want)
    assert _folders(off_cache) == []


def test_warm_source_keeps_compact_labels_and_gives_int64_batches(synth2d, make_config, tmp_path):
    cfg = _cfg(make_config, synth2d, tmp_path / "cache")
    bundle = build_bundle(cfg)
    cold = build_train_source(cfg, bundle)
    warm = build_train_source(cfg, bundle)
    assert cold.labels.dtype == torch.int64 and warm.labels.dtype == torch.uint8
    idx = torch.arange(len(cold))
    for got, want in zip(warm.samples(idx, torch.Generator()), cold.samples(idx, torch.Generator())):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert int(cold.labels.max()) > 0
