"""Unpacking downloaded archives without letting them write outside their folder.

Every member is checked before anything is written: a name that is absolute or climbs
out with ``..``, a link, a device or any other non-regular entry stops the whole archive,
naming the member. Tar files are then extracted with Python's ``data`` filter as well.
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ...core.errors import FeatxError


class UnpackError(FeatxError):
    """An archive that cannot be unpacked safely, or at all."""


def _unsafe_name(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and p.parts[0].endswith(":")):
        return "an absolute name"
    if ".." in p.parts:
        return "a name that leaves the folder"
    return None


def _check(archive: Path, name: str, kind_ok: bool, kind: str) -> None:
    reason = _unsafe_name(name) or (None if kind_ok else f"a {kind}, not a file or folder")
    if reason:
        raise UnpackError(f"{archive}: unsafe member {name!r} ({reason}); nothing was unpacked")


def unpack(archive: str | os.PathLike, into: str | os.PathLike) -> None:
    """Extract a tar (plain or compressed) or zip archive into ``into``, all members checked first."""
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    _check(archive, info.filename, not stat.S_ISLNK(mode), "symbolic link")
                zf.extractall(into)
            return
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                kind = ("symbolic link" if m.issym() else "hard link" if m.islnk()
                        else "device or other special entry")
                _check(archive, m.name, m.isfile() or m.isdir(), kind)
            tf.extractall(into, members=members, filter="data")
    except UnpackError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise UnpackError(f"{archive}: cannot unpack ({exc})") from None
