"""Never lose a user's data (issue 12): predict / export / train outputs.

An output never replaces an input; existing outputs are replaced only with ``--overwrite``; every input is checked
before anything is written; a write error (read-only folder, full disk, ``/proc``) is one line naming the path,
exit 2, and leaves nothing half-written; written files respect the umask; an unfinished run's export says so.

Tests run as root, where ``chmod 0o500`` does not stop writes, so write failures are made real in other ways: a
path under ``/proc`` (no new files there, even for root), a file-size limit (``RLIMIT_FSIZE``: writes past it fail
with EFBIG, for root too) in a subprocess, or a writer monkeypatched to raise ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from medkd.cli import main
from medkd.data.nifti_io import read_nifti, write_nifti
from medkd.errors import MedkdError
from medkd.io import atomic_write_bytes, atomic_write_json, atomic_write_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(synth2d, tmp_path_factory, make_run_config):
    """A tiny finished unet_s1 run (1 epoch, 32 x 32) on the session's synthetic 2D data."""
    from medkd.train.trainer import train

    base = tmp_path_factory.mktemp("safety")
    cfg = make_run_config(synth2d, name="safety", train={"epochs": 1, "threads": 1})
    train(cfg, base / "run", device="cpu")
    return base / "run"


@pytest.fixture()
def msd_images(synth2d, tmp_path):
    """Three images named MSD-style (``case_000.nii.gz``: no ``_0000`` channel suffix)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, src in enumerate(sorted((synth2d / "imagesTr").glob("*_0000.nii.gz"))[:3]):
        shutil.copy(src, folder / f"case_{i:03d}.nii.gz")
    return folder


# ------------------------------------------------------------------------------------ 1. never replace an input


def test_predict_never_replaces_msd_style_inputs(run, msd_images, capsys):
    before = _hashes(msd_images)
    for extra in ([], ["--overwrite"]):
        assert main(["predict", str(run), str(msd_images), "--out", str(msd_images), *extra]) == 2
        _one_error_line(capsys.readouterr().err, str(msd_images / "case_000.nii.gz"), "input image")
        assert _hashes(msd_images) == before  # inputs byte-identical, no label map or scratch file added


def test_predict_never_replaces_an_input_through_a_link(run, msd_images, tmp_path, capsys):
    before = _hashes(msd_images)
    out = tmp_path / "out"
    out.mkdir()
    os.link(msd_images / "case_001.nii.gz", out / "case_001.nii.gz")  # the same file under the output's name
    (out / "case_002.nii.gz").symlink_to(msd_images / "case_002.nii.gz")
    assert main(["predict", str(run), str(msd_images), "--out", str(out), "--overwrite"]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_001.nii.gz"), str(msd_images / "case_001.nii.gz"))
    os.unlink(out / "case_001.nii.gz")
    assert main(["predict", str(run), str(msd_images), "--out", str(out), "--overwrite"]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_002.nii.gz"), "input image")
    assert _hashes(msd_images) == before
    assert sorted(p.name for p in out.iterdir()) == ["case_002.nii.gz"]


def test_predict_replaces_existing_outputs_only_with_overwrite(run, msd_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 0
    first = _hashes(out)
    assert sorted(first) == ["case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    (out / "case_001.nii.gz").write_bytes(b"the user's own file")
    edited = _hashes(out)
    capsys.readouterr()
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_000.nii.gz"), "--overwrite")
    assert _hashes(out) == edited  # nothing replaced, not even the outputs that were not in the way
    assert main(["predict", str(run), str(msd_images), "--out", str(out), "--overwrite"]) == 0
    assert _hashes(out) == first
    assert read_nifti(out / "case_001.nii.gz")[0].dtype == np.uint8


# ------------------------------------------------------------------------ 2. write errors: one line, nothing left


def test_predict_write_error_midway_leaves_no_partial_output(run, msd_images, tmp_path, monkeypatch, capsys):
    import medkd.predict as predict_mod

    calls = []

    def full_disk_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a label m")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_nifti(path, *args, **kwargs)

    monkeypatch.setattr(predict_mod, "write_nifti", full_disk_on_second)
    before = _hashes(msd_images)
    # a new folder (with a missing parent): both are removed again
    out = tmp_path / "new" / "preds"
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_001.nii.gz"), "No space left on device")
    assert not (tmp_path / "new").exists()
    # an existing folder keeps exactly what it held
    calls.clear()
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_001.nii.gz"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert _hashes(msd_images) == before


def test_predict_overwrite_failure_keeps_the_old_outputs(run, msd_images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 0
    old = _hashes(out)
    import medkd.io as io_mod

    real_replace = os.replace

    def fail_third_move(src, dst):  # moving the third staged label map into place fails
        if Path(src).name.endswith("-case_002.nii.gz") and Path(dst).parent == out:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", fail_third_move)
    capsys.readouterr()
    assert main(["predict", str(run), str(msd_images), "--out", str(out), "--overwrite"]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "case_002.nii.gz"), "nothing was written")
    assert _hashes(out) == old  # the first two, already moved, were rolled back to the old files


def test_predict_to_proc_is_one_line_and_writes_nothing(run, msd_images, capsys):
    before = _hashes(msd_images)
    assert main(["predict", str(run), str(msd_images), "--out", "/proc/medkd-test/preds"]) == 2
    _one_error_line(capsys.readouterr().err, "/proc/medkd-test")
    assert _hashes(msd_images) == before


def _limited(limit: int, *argv: str) -> subprocess.CompletedProcess:
    """``medkd ARGV`` in a subprocess whose files may not grow past ``limit`` bytes (a full disk, even for root)."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from medkd.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)


def test_predict_real_write_failure_after_a_first_success(run, tmp_path):
    """A real EFBIG on the second label map: the first (which fit) must not remain."""
    images = tmp_path / "images"
    images.mkdir()
    write_nifti(images / "a_small.nii.gz", np.zeros((4, 4, 1), np.float32))
    # 512 x 512 voxels cannot deflate below ~260 bytes, whatever the prediction; 4 x 4 stays far below 200
    write_nifti(images / "b_large.nii.gz", np.zeros((512, 512, 1), np.float32))
    before = _hashes(images)
    out = tmp_path / "preds"
    out.mkdir()
    result = _limited(200, "predict", str(run), str(images), "--out", str(out))
    assert result.returncode == 2, result.stderr
    _one_error_line(result.stderr, str(out / "b_large.nii.gz"), "File too large")
    assert list(out.iterdir()) == []
    assert _hashes(images) == before


def test_export_write_error_keeps_the_previous_export(run, tmp_path, monkeypatch, capsys):
    import medkd.io as io_mod

    out = tmp_path / "deploy"
    assert main(["export", str(run), "--out", str(out)]) == 0
    old = _hashes(out)
    assert sorted(old) == ["model.onnx", "model.onnx.json"]
    real_write = io_mod.StagedFiles.write

    def full_disk_on_sidecar(self, final, writer):
        if Path(final).name.endswith(".json"):
            def writer(tmp):
                tmp.write_text('{"format": "on')
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, final, writer)

    monkeypatch.setattr(io_mod.StagedFiles, "write", full_disk_on_sidecar)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(out / "model.onnx.json"), "No space left on device")
    assert _hashes(out) == old  # the new model.onnx never replaced the old one; no scratch folder left
    assert main(["export", str(run), "--out", str(tmp_path / "fresh" / "model.onnx")]) == 2
    capsys.readouterr()
    assert not (tmp_path / "fresh").exists()


def test_export_real_write_failures_are_one_line(run, tmp_path, capsys):
    assert main(["export", str(run), "--out", "/proc/medkd-test/model.onnx"]) == 2
    _one_error_line(capsys.readouterr().err, "/proc/medkd-test")
    result = _limited(4000, "export", str(run), "--out", str(tmp_path / "deploy"))
    assert result.returncode == 2, result.stderr
    _one_error_line(result.stderr, str(tmp_path / "deploy" / "model.onnx"), "File too large")
    assert not (tmp_path / "deploy").exists()


def test_export_refuses_to_replace_a_file_that_is_not_an_export(run, tmp_path, capsys):
    target = tmp_path / "case_000.nii.gz"
    target.write_bytes(b"an image")
    assert main(["export", str(run), "--out", str(target)]) == 2
    _one_error_line(capsys.readouterr().err, str(target), "not a medkd export")
    assert target.read_bytes() == b"an image"


def test_train_write_errors_are_one_line(run, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text((run / "config.yaml").read_text())
    assert main(["train", str(config), "--out", "/proc/medkd-test/run", "--no-evaluate"]) == 2
    _one_error_line(capsys.readouterr().err, "/proc/medkd-test")
    # the config and split fit under the limit, the first checkpoint does not (the prepared-sample cache, which
    # would not fit either and only earns a note, is off here)
    result = _limited(20_000, "train", str(config), "--out", str(tmp_path / "run"), "--no-evaluate",
                      "--set", "data.prepared=off")
    assert result.returncode == 2, result.stderr
    _one_error_line(result.stderr, str(tmp_path / "run"), "File too large")


# ------------------------------------------------------------------------- 3. every input checked before writing


def test_predict_checks_every_input_before_writing(run, msd_images, tmp_path, capsys):
    data, affine = read_nifti(msd_images / "case_001.nii.gz")
    data = data.astype(np.float32)
    data.flat[5] = np.nan
    write_nifti(msd_images / "case_001.nii.gz", data, affine=affine)
    before = _hashes(msd_images)
    out = tmp_path / "out"
    assert main(["predict", str(run), str(msd_images), "--out", str(out)]) == 2
    assert not out.exists()  # case_000 was fine, but nothing is written before every input has been read
    _one_error_line(capsys.readouterr().err, str(msd_images / "case_001.nii.gz"), "NaN")
    assert _hashes(msd_images) == before


# ------------------------------------------------------------------------------------------- 4. file modes


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(umask, run, msd_images, tmp_path):
    expected = 0o666 & ~umask
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "a")
        atomic_write_bytes(tmp_path / "b.bin", b"b")
        atomic_write_json(tmp_path / "c.json", {"c": 1})
        assert main(["predict", str(run), str(msd_images), "--out", str(tmp_path / "preds")]) == 0
        assert main(["export", str(run), "--out", str(tmp_path / "deploy")]) == 0
        files = [tmp_path / n for n in ("a.txt", "b.bin", "c.json")]
        files += sorted((tmp_path / "preds").iterdir()) + sorted((tmp_path / "deploy").iterdir())
        assert len(files) == 8
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == expected, f
        # a replaced file keeps its mode, as open() would leave it
        os.chmod(tmp_path / "a.txt", 0o640)
        atomic_write_text(tmp_path / "a.txt", "again")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640

        from medkd.io import staged_files

        with staged_files(tmp_path / "staged") as stage:
            stage.write(tmp_path / "staged" / "d.txt", lambda tmp: tmp.write_text("d"))
        assert stat.S_IMODE((tmp_path / "staged" / "d.txt").stat().st_mode) == expected
    finally:
        os.umask(old)


def test_staged_files_is_all_or_nothing(tmp_path):
    from medkd.io import staged_files

    def full_disk(tmp):
        tmp.write_text("hal")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    folder = tmp_path / "f"
    with pytest.raises(MedkdError, match=r"b\.txt: cannot write \(No space left on device\)"):
        with staged_files(folder) as stage:
            stage.write(folder / "a.txt", lambda tmp: tmp.write_text("a"))
            stage.write(folder / "b.txt", full_disk)
    assert not folder.exists()
    with pytest.raises(KeyboardInterrupt):
        with staged_files(tmp_path) as stage:
            stage.write(tmp_path / "a.txt", lambda tmp: tmp.write_text("a"))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ 5. unfinished runs


def test_export_of_an_unfinished_run_warns_and_records_the_epoch(run, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "done")]) == 0
    assert capsys.readouterr().err == ""
    info = json.loads((tmp_path / "done" / "model.onnx.json").read_text())
    assert info["epoch"] == 1 and info["last_epoch"] == 1 and info["epochs"] == 1 and info["finished"] is True

    # the folder of a run killed after epoch 1 of 8: last.json says 1, config 8, no train_summary.json
    killed = tmp_path / "killed"
    shutil.copytree(run, killed, ignore=shutil.ignore_patterns("export", "evaluation"))
    (killed / "train_summary.json").unlink()
    cfg = yaml.safe_load((killed / "config.yaml").read_text())
    cfg["train"]["epochs"] = 8
    (killed / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["export", str(killed)]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().split("\n")
    assert warning.startswith(f"warning: {killed}: training has not finished (1 of 8 epochs)")
    assert "exported unet_s1" in captured.out
    info = json.loads((killed / "export" / "model.onnx.json").read_text())
    assert info["epoch"] == 1 and info["last_epoch"] == 1 and info["epochs"] == 8 and info["finished"] is False
