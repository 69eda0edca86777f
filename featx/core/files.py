"""Files that survive a kill or a full disk: atomic writes, one writer per file.

Every file featx writes goes to a temporary name beside its target, is fsynced and then
renamed over it, so a reader (or a run after a SIGKILL) sees the old file or the new
one, never half of one. A write that fails because the disk is full, the quota is used
up or the folder is read-only raises :class:`~featx.core.errors.WriteError` in one line.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import FeatxError, WriteError

# errno values that mean "this file cannot be written here", as opposed to a bug
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file grew past the size this process may write",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write, also when HDF5 reports it only inside its message."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    m = re.search(r"errno = (\d+)", str(exc))
    return int(m.group(1)) if m else None


def write_error(path: Path, exc: BaseException) -> WriteError | None:
    """A one-line :class:`WriteError` for ``exc`` when it is a failed write, else None."""
    code = write_errno(exc)
    if code not in _WRITE_ERRNOS:
        return None
    return WriteError(f"{path}: cannot write it, {_WRITE_ERRNOS[code]} ({os.strerror(code)})")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed processes (not by live ones)."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block succeeds it is fsynced and
    renamed over ``path``. On any failure the temporary file is removed and ``path`` is
    left as it was; a full disk or a read-only folder raises :class:`WriteError`."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except FeatxError:
        raise
    except Exception as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


@contextmanager
def write_lock(target: Path, busy: str, error: type[FeatxError] = FeatxError, wait: bool = False):
    """One writer per ``target``: a second writer, in another process or another thread
    of this one, raises ``error(busy)`` at once, or with ``wait`` waits for the first to
    finish.

    A POSIX record lock (``lockf``) on ``<target>.lock``, not ``flock``: forked DataLoader
    workers do not inherit it, so a killed run's orphaned workers cannot keep it locked,
    and the kernel drops it when the process dies, however it dies. ``lockf`` belongs to
    a process, so threads of one process take a lock of their own first.
    """
    lock_path = target.with_name(target.name + ".lock")
    with _THREADS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(os.path.abspath(lock_path), threading.Lock())
    if not in_process.acquire(blocking=wait):
        raise error(busy)
    try:
        with open(lock_path, "a+") as fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise error(busy) from None
            yield
    finally:
        in_process.release()


_THREADS_GUARD = threading.Lock()
_THREAD_LOCKS: dict[str, threading.Lock] = {}  # lock file -> the lock threads of this process take first
