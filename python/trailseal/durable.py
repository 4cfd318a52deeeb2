"""Durable file writes: every state file and every ``file://`` object goes through these.

- :func:`fsync_dir` makes a directory entry (a create, link or rename) survive a crash.
- :func:`replace_atomically` replaces a file: temporary name beside it, fsync, rename, fsync dir.
- :func:`create_exclusively` creates a file that must not be overwritten: temporary name, fsync,
  hard link into place (fails if the name exists), fsync dir. A reader never sees a partial file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_MARK = ".tmp-"
"""Temporary files are named ``.<name>.tmp-<random>`` beside their target."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}{TMP_MARK}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def replace_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path``, replacing it atomically and durably."""
    tmp = _write_tmp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_exclusively(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` with ``data`` atomically and durably; False (and nothing written) if it
    already exists."""
    tmp = _write_tmp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True
