"""One run per output folder at a time: an advisory lock on ``out/run.lock``.

Two processes appending to one rows file would interleave their batches (and each would
rewrite ``summary.json`` from the rows it knows), so ``evaluate`` holds the lock from
opening the folder to writing the summary, and a second run on the same folder stops at
once, naming the holder. The lock is ``fcntl.flock`` (POSIX): the kernel releases it when
the holding process ends, however it ends, so the file a killed run leaves behind blocks
nothing and a later run resumes. Where ``fcntl`` is missing (Windows) there is no lock.
Like every advisory lock it binds only processes that ask for it, and it may not hold
across machines on a network file system that does not support ``flock``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputPathError

LOCK_FILE = "run.lock"


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock for the block (created with the folder if need be).

    Raises:
        OutputPathError: another process holds it (the message names that process).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    # "a+": never truncates a holder's note before the lock is ours
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # BlockingIOError: someone holds it
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputPathError(
                f"'{out_dir}' is in use by another timmlens run ({holder}); two runs in one "
                f"folder would interleave their rows: wait for that run to finish, or use "
                f"another output folder (--out)."
            ) from exc
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
