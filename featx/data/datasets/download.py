"""Downloads that resume, show their progress and are checked before anything uses them.

A file streams into ``<name>.part`` beside its destination. A dropped connection is
retried from where it stopped (an HTTP range request), and so is a download that an
earlier, killed run left behind. Only a file of the expected size and SHA-256 is renamed
to its final name; anything else is deleted and reported.
"""
from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ...core import progress
from ...core.errors import FeatxError
from ...core.files import fsync_dir
from ...core.hashing import sha256_file
from ...core.version import __version__

ATTEMPTS = 3  # connections per download; each one resumes where the last stopped
TIMEOUT = 60  # seconds without a byte before a connection counts as dropped


class DownloadError(FeatxError):
    """A file that could not be downloaded, or that is not the file expected."""


@dataclass(frozen=True)
class Remote:
    """One file to download: where it is, and what it must be."""

    url: str  # "" for a file that can only be handed over (featx datasets get --archive)
    size: int
    sha256: str
    name: str = ""  # the file's name, when it is not the last part of the URL

    @property
    def filename(self) -> str:
        return self.name or os.path.basename(urlparse(self.url).path)


def is_verified(path: Path, remote: Remote) -> bool:
    """Whether ``path`` is the file ``remote`` describes (size, then SHA-256)."""
    return path.is_file() and path.stat().st_size == remote.size and sha256_file(path) == remote.sha256


def fetch(remote: Remote, folder: str | os.PathLike, offline_hint: str = "") -> Path:
    """``folder/<filename>``, downloaded unless a verified copy is already there.

    ``offline_hint`` ends the message when the server cannot be reached at all (what to
    do instead, e.g. how to hand over a copy fetched elsewhere).
    """
    folder = Path(folder)
    dest = folder / remote.filename
    if is_verified(dest, remote):
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        if have >= remote.size:
            break
        try:
            _stream(remote, part, have)
        except _Dropped as exc:
            if attempt == ATTEMPTS:
                got = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"{remote.url}: the connection dropped after {got:,} of {remote.size:,} "
                                    f"bytes ({exc}); run the same command again to resume") from None
        except _Unreachable as exc:
            raise DownloadError(f"cannot download {remote.url} ({exc}){offline_hint}") from None
    got = part.stat().st_size if part.exists() else 0
    digest = sha256_file(part) if got == remote.size else None
    if digest != remote.sha256:
        part.unlink(missing_ok=True)
        found = f"SHA-256 {digest}" if digest else f"{got:,} bytes"
        raise DownloadError(f"{remote.url}: not the expected file (expected {remote.size:,} bytes with "
                            f"SHA-256 {remote.sha256}, got {found}); the download was deleted")
    os.replace(part, dest)
    fsync_dir(folder)
    return dest


class _Dropped(Exception):
    """The connection broke mid-file: worth resuming."""


class _Unreachable(Exception):
    """The server could not be reached or refused the file: not worth retrying."""


def _stream(remote: Remote, part: Path, have: int) -> None:
    headers = {"User-Agent": f"featx/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(remote.url, headers=headers),
                                          timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise _Unreachable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Unreachable(getattr(exc, "reason", None) or exc) from None
    with response:
        if have and response.status != 206:  # the server sends the whole file: start again
            have = 0
        with open(part, "ab" if have else "wb") as fh, progress.bar(
                remote.size, remote.filename, unit="B", initial=have, transient=True) as bar:
            try:
                while block := response.read(1 << 20):
                    fh.write(block)
                    bar.update(len(block))
                    have += len(block)
                    if have > remote.size:
                        break  # longer than expected: the check in fetch refuses it
            except (OSError, http.client.HTTPException) as exc:
                raise _Dropped(type(exc).__name__ if not str(exc) else str(exc)) from None
            finally:
                fh.flush()
                os.fsync(fh.fileno())
        if have < remote.size:
            raise _Dropped("the server closed the connection early")
