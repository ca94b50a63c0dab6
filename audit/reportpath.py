"""Report paths are checked when the command line is read, so that a bad ``--json`` / ``--html``
path is a usage error (exit 4) before any check runs, not a failure after all of them."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from robaudit.errors import UsageError


def ensure_writable(option: str, path: str | Path) -> None:
    """Raise :class:`UsageError` unless a report file can be created at ``path`` (its missing
    parent folders are created when the report is written)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give the report's file name")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, so the folder cannot be made")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: no permission to write under {ancestor}")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: into a temporary file in the same folder,
    flushed to disk, then renamed over ``path`` (design §5). A failed or concurrent write never
    leaves a truncated report where a valid one stood; the temporary file is removed on failure.
    A target that exists but is not a regular file (``/dev/stdout``, a pipe) is written in place:
    renaming over it would replace the device or pipe itself. The report gets the mode a plain
    write would give it (the old report's, else 0o666 less the umask), not the temporary file's
    private 0o600.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, stat.S_IMODE(path.stat().st_mode) if path.exists() else
                 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
