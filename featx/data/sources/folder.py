"""An ImageFolder directory: ``root/<class>/<image>``."""
from __future__ import annotations

import os
from pathlib import Path

from ...core.errors import SourceError
from ..images import is_image_name
from .base import Item, Source, label_items, stamp
from .listing import encode, joined

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


class ImageFolderSource(Source):
    """``root/<class>/<image>``; images directly in ``root`` are unlabelled."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"{root}: not a directory")
        real = root.resolve()
        # a split folder is named with its dataset's: data/cifar10/train -> cifar10-train
        split = real.name.lower() in SPLIT_NAMES and real.parent.name
        name = f"{real.parent.name}-{real.name}" if split else real.name
        super().__init__(spec=f"dir:{real}", name=name)
        self.root = root
        keys, stamps, problems, seen = [], [], [], set()
        # Symlinked folders are followed, each real folder listed once: a link that loops
        # back is reported, not walked forever.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=None):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                problems.append((rel_dir + "/",
                                 "folder link leads to a folder already listed (not read twice)"))
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            empty = not dirnames and all(f.startswith(".") for f in filenames)
            if rel_dir != "." and "/" not in rel_dir and empty:
                problems.append((rel_dir + "/", "class folder holds no files"))
            # one folder's names at a time become compact arrays: no per-image objects kept
            here_keys, here_stamps = [], []
            for fn in sorted(filenames):
                if fn.startswith("."):
                    continue
                key = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if not is_image_name(fn):
                    problems.append((key, f"not an image file extension ({Path(fn).suffix or 'none'})"))
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, fn))
                except OSError as exc:
                    problems.append((key, f"cannot stat: {exc.strerror}"))
                    continue
                here_keys.append(key)
                here_stamps.append(stamp(st))
            if here_keys:
                keys.append(encode(here_keys))
                stamps.append(encode(here_stamps))
        self.classes, self.items = label_items(joined(keys), joined(stamps))
        self.problems = problems

    def read(self, item: Item) -> bytes:
        with open(self.root / item.key, "rb") as fh:
            return fh.read()

    def where(self, key: str) -> str:
        return str(self.root / key)

