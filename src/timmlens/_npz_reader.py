"""Reading ``.npz`` archives from untrusted files: no pickle, no zip bomb, no leaked handle.

``np.load`` trusts what a file declares: a truncated or tampered archive surfaces as
``BadZipFile``, ``EOFError`` or ``ValueError`` and can leave the file open, and a few
hundred kB can declare (and decompress into) gigabytes. Here every array's ``.npy``
header is read first; its shape and dtype are checked against the caller's rules and a
limit on the bytes all arrays declare together, and only then are the arrays read, each
to its declared length and its zip checksum.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

# What a damaged archive raises from zipfile, zlib and numpy's .npy reader.
_DAMAGE = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    OSError,
    NotImplementedError,  # a compression method zipfile does not know
    RuntimeError,  # an encrypted member
)

# (shape, dtype) -> None when the array is acceptable, else what is wrong with it.
HeaderCheck = Callable[[str, tuple[int, ...], np.dtype], str | None]


class ArchiveError(Exception):
    """What is wrong with an archive; the caller words it for its users (with the path)."""

    def __init__(self, problem: str, *, too_large: bool = False) -> None:
        super().__init__(problem)
        self.too_large = too_large


def _header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(stream)
    else:  # 3.0 only adds UTF-8 field names, which no array of ours has
        raise ValueError(f".npy format {version} is not read here")
    return tuple(shape), dtype


def declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds (exact Python ints: no overflow)."""
    return math.prod(shape) * dtype.itemsize


def read_npz(
    path: Path,
    wanted: Callable[[str], bool],
    check: HeaderCheck,
    max_bytes: int,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` whose names (without ``.npy``) are ``wanted``.

    Raises:
        ArchiveError: not a zip archive, damaged, an array that ``check`` refuses, an
            object array (a pickle), or arrays declaring more than ``max_bytes`` together.
            Other members are never read.
    """
    with open(path, "rb") as stream:  # closed whatever happens below
        if not stream.read(4):
            raise ArchiveError("the file is empty")
        stream.seek(0)
        try:
            with zipfile.ZipFile(stream) as archive:
                return _read_members(archive, wanted, check, max_bytes)
        except ArchiveError:
            raise
        except zipfile.BadZipFile as exc:
            if not zipfile.is_zipfile(stream):
                raise ArchiveError(f"it is not a zip archive, or one cut short ({exc})") from exc
            raise ArchiveError(f"{exc}") from exc
        except _DAMAGE as exc:
            raise ArchiveError(f"{type(exc).__name__}: {exc}") from exc


def _read_members(
    archive: zipfile.ZipFile, wanted: Callable[[str], bool], check: HeaderCheck, max_bytes: int
) -> dict[str, np.ndarray]:
    members = {
        info.filename.removesuffix(".npy"): info
        for info in archive.infolist()
        if info.filename.endswith(".npy") and wanted(info.filename.removesuffix(".npy"))
    }
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for name, info in members.items():
        with archive.open(info) as member:
            try:
                shape, dtype = _header(member)
            except ValueError as exc:
                raise ArchiveError(f"'{name}' is not an .npy array ({exc})") from exc
        if dtype.hasobject:
            raise ArchiveError(
                f"'{name}' is an object array, stored as a pickle; pickles can run code "
                f"when loaded and are never read"
            )
        problem = check(name, shape, dtype)
        if problem:
            raise ArchiveError(f"'{name}' {problem}")
        headers[name] = shape, dtype
    total = sum(declared_bytes(*header) for header in headers.values())
    if total > max_bytes:
        largest = max(headers, key=lambda name: declared_bytes(*headers[name]))
        shape, dtype = headers[largest]
        raise ArchiveError(
            f"its arrays declare {total:,} bytes together ('{largest}': shape {shape}, "
            f"{dtype}), over the limit of {max_bytes:,} bytes",
            too_large=True,
        )
    return {name: _read_array(archive, info) for name, info in members.items()}


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        array = npy_format.read_array(member, allow_pickle=False)
        # Reading on to the end makes zipfile check the member's CRC-32.
        if member.read(1):
            raise ValueError(f"'{info.filename}' holds more bytes than its header declares")
    return array
