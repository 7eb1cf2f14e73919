"""User-facing errors.

Anything a user can cause (a bad path, a broken file, an unknown name, a wrong shape) raises
:class:`MedkdError` with a one-line message that names the file or key and what is wrong. The
command line prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["MedkdError", "ConfigError", "DataError", "nearest_names", "unknown_name_error"]


class MedkdError(Exception):
    """An error caused by user input; its message is shown as a single line."""


class ConfigError(MedkdError):
    """A configuration value or name is invalid."""


class DataError(MedkdError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def nearest_names(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` valid names closest to ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(valid), n=n, cutoff=0.4)


def unknown_name_error(kind: str, name: str, valid: Iterable[str], cls: type[MedkdError] = ConfigError) -> MedkdError:
    """Build the standard "unknown X 'y'; did you mean ..." error."""
    valid = sorted(valid)
    close = nearest_names(name, valid)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; valid: {', '.join(valid)}"
    return cls(f"unknown {kind} {name!r}{hint}")
