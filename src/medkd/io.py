"""Safe file writes: atomic single files and all-or-nothing sets of files.

:func:`atomic_write` writes a temp file in the same folder, then ``os.replace``: a run killed mid-write never leaves
a partly written file under the final name. :func:`staged_files` writes a *set* of files (the label maps of one
``medkd predict``, an export and its sidecar) into a hidden scratch folder beside them and moves them into place
only when every one was written; on any failure nothing of the set remains, files it would have replaced are kept,
and folders it created are removed again.

Written files get the permissions ``open()`` would give them: ``0o666 & ~umask`` for a new file, the old mode for
a file that is replaced (``tempfile.mkstemp`` alone would make every file ``0o600``).

Example::

    with staged_files(Path("preds")) as stage:
        stage.write(Path("preds/a.nii.gz"), lambda tmp: write_nifti(tmp, label_map))
        stage.write(Path("preds/b.nii.gz"), lambda tmp: write_nifti(tmp, other_map))
    # both files are in place, or (after an error) neither is
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medkd.errors import MedkdError

__all__ = [
    "StagedFiles",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_mode",
    "staged_files",
]


def _umask() -> int:
    """The process umask (read without changing it where Linux allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(path: str | os.PathLike) -> int:
    """The permission bits ``open(path, "w")`` would leave on ``path``: the current ones for an existing file,
    ``0o666 & ~umask`` for a new one."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _errno(err: BaseException) -> int | None:
    """The OS error number of a failed write: an ``OSError``'s, or the one a Rust-backed writer (safetensors)
    puts in its message as ``(os error 28)``; None for anything else."""
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, Exception):
        found = _RUST_OS_ERROR.search(str(err))
        if found:
            return int(found.group(1))
    return None


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` then move the temp file onto ``path``.

    Args:
        path: final file path; its folder is created if needed.
        writer: function that writes the complete file to the given temporary path.

    Raises:
        OSError: the folder, the temp file, the writer or the move failed with an OS error (also one a Rust-backed
            writer such as safetensors reports in its own exception type); its ``filename`` is ``path``, not the
            temp file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, _reason(err), str(path)) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, file_mode(path))
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        code = _errno(err)
        if code is not None and getattr(err, "filename", None) != str(path):
            raise OSError(code, _reason(err) if isinstance(err, OSError) else os.strerror(code), str(path)) from err
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class StagedFiles:
    """Files written into a hidden scratch folder and moved into ``folder`` together (see :func:`staged_files`).

    Args:
        folder: where the files go; created (with missing parents) if needed, and removed again if this set
            fails and left it empty.
        label: part of the scratch folder's name (``.<label>-XXXX``).

    Raises:
        MedkdError: ``folder`` cannot be created or written to (names the folder).
    """

    def __init__(self, folder: str | os.PathLike, label: str = "medkd") -> None:
        self.folder = Path(folder)
        self.created: list[Path] = []  # folders this set made, outermost first
        missing = []
        for parent in [self.folder, *self.folder.parents]:
            if parent.exists() or parent.is_symlink():
                break
            missing.append(parent)
        where = self.folder
        try:
            for parent in reversed(missing):
                where = parent
                parent.mkdir()
                self.created.append(parent)
            where = self.folder
            self.scratch = Path(tempfile.mkdtemp(prefix=f".{label}-", suffix=".partial", dir=self.folder))
        except OSError as err:
            self._remove_created()
            raise MedkdError(f"{where}: cannot create or write to this folder ({_reason(err)}); "
                             "nothing was written") from None
        self.files: dict[Path, Path] = {}  # final path -> scratch path

    def write(self, final: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
        """Write one file of the set: ``writer(tmp)`` must write the complete file to ``tmp``.

        Returns:
            ``final`` (the file appears there at commit).

        Raises:
            MedkdError: the write failed (names ``final``); the caller's ``with`` block then removes the whole set.
        """
        final = Path(final)
        if final.is_dir() and not final.is_symlink():
            raise MedkdError(f"{final}: a folder is in the way of this output; nothing was written")
        if final in self.files:
            raise MedkdError(f"{final}: written twice in one call; nothing was written")
        tmp = self.scratch / f"{len(self.files):05d}-{final.name}"
        self.files[final] = tmp
        try:
            writer(tmp)
            os.chmod(tmp, file_mode(final))
        except Exception as err:
            code = _errno(err)
            if code is None:
                raise
            reason = _reason(err) if isinstance(err, OSError) else os.strerror(code)
            raise MedkdError(f"{final}: cannot write ({reason}); nothing was written") from None
        return final

    def commit(self) -> list[Path]:
        """Move every written file into place; all or nothing (replaced files are restored on failure)."""
        backups: list[tuple[Path, Path]] = []
        moved: list[Path] = []
        final = self.folder
        try:
            for i, (final, tmp) in enumerate(self.files.items()):
                if final.is_symlink() or final.exists():
                    backup = self.scratch / f"old-{i:05d}"
                    os.replace(final, backup)
                    backups.append((final, backup))
                os.replace(tmp, final)
                moved.append(final)
        except OSError as err:
            stuck = self._undo(moved, backups)
            tail = f"; could not undo: {', '.join(map(str, stuck))}" if stuck else "; nothing was written"
            raise MedkdError(f"{final}: cannot move into place ({_reason(err)}){tail}") from None
        return list(self.files)

    def _undo(self, moved: list[Path], backups: list[tuple[Path, Path]]) -> list[Path]:
        stuck = []
        for final in reversed(moved):
            try:
                final.unlink(missing_ok=True)
            except OSError:
                stuck.append(final)
        for final, backup in reversed(backups):
            try:
                os.replace(backup, final)
            except OSError:
                stuck.append(final)
        return stuck

    def cleanup(self, failed: bool) -> None:
        """Remove the scratch folder (and, after a failure, the folders this set created if they are empty)."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if failed:
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike, label: str = "medkd") -> Iterator[StagedFiles]:
    """Write a set of files into ``folder`` all or nothing.

    Inside the block, :meth:`StagedFiles.write` writes each file to a scratch folder in ``folder``; when the block
    ends normally every file is moved into place, and when it raises (a write error, a bad input, Ctrl-C) the
    scratch folder is removed, no file of the set appears and no existing file is touched.

    Args:
        folder: the folder the files go to (created if needed).
        label: part of the hidden scratch folder's name.

    Yields:
        The :class:`StagedFiles` to write through.

    Raises:
        MedkdError: a folder, write or move failed; the message names the path.
    """
    stage = StagedFiles(folder, label)
    failed = True
    try:
        yield stage
        stage.commit()
        failed = False
    finally:
        stage.cleanup(failed)
