"""The file store's dealings with the file system: whole writes, room checks, and failures told in plain words.

An OS failure becomes a ``StoreError`` that says what was being done, on which
path, and why (``no space left on device on /var/lib/mini-ipam/state.json.0.log
(file system /var)``), with the ``OSError`` as its cause, so that a caller that
knows the settings can add what to do about it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from stores.base import StoreError

REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EIO: "input/output error (a failing disk?)",
}


def reason(exc: OSError, path: Path) -> str:
    """Why ``exc`` happened on ``path``, in plain words; a full disk also names its file system."""
    text = REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text} on {path} (file system {mount_point(path)})"
    return text


def failure(what: str, path: Path, exc: OSError) -> StoreError:
    """``what`` (``cannot write the journal``) failed on ``path``: a StoreError to raise ``from exc``."""
    return StoreError(f"{what} {path}: {reason(exc, path)}")


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or its nearest existing parent)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        device = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == device:
            path = path.parent
    except OSError:
        pass  # a parent we may not look at: the deepest one we could see will do
    return path


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: a short write is retried, so a full disk is reported as ENOSPC, not as a count."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def has_room(fd: int, offset: int, size: int) -> bool:
    """Whether ``size`` more bytes can be written to the file ``fd`` after ``offset``; the file is left as it was."""
    try:
        os.posix_fallocate(fd, offset, size)
    except OSError as exc:
        return exc.errno in (errno.EOPNOTSUPP, errno.EINVAL)  # cannot tell here: the next write will
    finally:
        try:
            os.ftruncate(fd, offset)
        except OSError:
            pass
    return True
