"""Output paths checked before any compute: a bad ``--out`` fails in a line, not after a batch.

Nothing is created here; the folder is made by whoever writes into it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputPathError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as anything: file, folder, link)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``.

    ``os.access`` alone is not enough: it says yes to root on a read-only mount and
    knows nothing of ACLs or quotas, so the answer is an actual (deleted) file.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".timmlens-write-check-"):
            pass
    except OSError:
        return False
    return True


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check that ``path`` is, or can be created as, a folder this process can write in.

    Args:
        path: the folder files will be written to (it need not exist yet).
        what: what the folder is, for the message (``"--out folder"``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputPathError: ``path`` is a file; it lies under a file; or the folder it is
            (or would be created in) is not writable.
    """
    folder = Path(path)
    existing = _nearest_existing(folder)
    if existing == folder and not folder.is_dir():
        raise OutputPathError(
            f"{what} '{folder}' is a file, not a folder. Give a folder path (it is created "
            f"if missing), or move the file away."
        )
    if not existing.is_dir():
        raise OutputPathError(
            f"{what} '{folder}' cannot be created: '{existing}' is a file, not a folder. "
            f"Give a path whose parents are folders."
        )
    if not _can_write_in(existing):
        where = "" if existing == folder else f" (it would be created in '{existing}')"
        raise OutputPathError(
            f"{what} '{folder}' is not writable{where}: permission denied or a read-only "
            f"file system. Give a folder you can write in."
        )
    return folder


def ensure_writable_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Check that the file ``path`` can be written (created or replaced).

    Raises:
        OutputPathError: ``path`` is a folder or a read-only file, or its folder fails
            `ensure_writable_dir`.
    """
    file = Path(path)
    if file.is_dir():
        raise OutputPathError(
            f"{what} '{file}' is a folder, not a file. Give a file path, or a path that does "
            f"not exist yet."
        )
    if file.exists() and not os.access(file, os.W_OK):
        raise OutputPathError(
            f"{what} '{file}' exists and is read-only. Give another path, or make it writable."
        )
    ensure_writable_dir(file.parent, f"{what} '{file}': folder")
    return file
