"""The journal that makes writing a store crash-safe.

Work in progress goes to a folder beside the store (``<store>.journal/``): each committed
batch group is an ``.npz`` file, itself written to a temporary name, fsynced and renamed
(its members carry zip CRCs, so a damaged chunk is found and recomputed). A killed run
loses at most the batches after its last commit; the next run reads the journal and
embeds only the rest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.files import atomic_path
from .rows import Rows


class _NpzMember:
    """One array of a journal chunk, loaded when its rows are needed."""

    def __init__(self, path: Path, key: str, shape: tuple[int, int]):
        self.path, self.key, self.shape = path, key, shape

    def take(self, rows: np.ndarray) -> np.ndarray:
        with np.load(self.path, allow_pickle=False) as z:
            return z[self.key][rows]



class Journal:
    """Committed batch groups of an unfinished extraction, one ``.npz`` file each.

    Under ``torchrun`` every process commits its own chunks (``writer`` names them, e.g.
    ``rank001-00000003.npz``); :meth:`read` returns everyone's.
    """

    def __init__(self, store_path: Path, writer: str = ""):
        self.dir = store_path.with_name(store_path.name + ".journal")
        self.prefix = f"{writer}-" if writer else ""

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("*.npz")) if self.dir.is_dir() else []

    def commit(self, rows: Rows) -> Rows:
        """Write ``rows`` as this writer's next chunk; returns them with features left on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        mine = [p for p in self.chunks() if p.stem.removeprefix(self.prefix).isdigit()
                and p.name.startswith(self.prefix)]
        seq = int(mine[-1].stem.removeprefix(self.prefix)) + 1 if mine else 0
        arrays = {
            "keys": rows.keys, "stamps": rows.stamps, "sha256": rows.sha256,
            "skipped_keys": rows.skipped_keys, "skipped_stamps": rows.skipped_stamps,
            "skipped_reasons": rows.skipped_reasons,
        }
        arrays.update({f"features/{n}": f for n, f in rows.features.items()})
        chunk = self.dir / f"{self.prefix}{seq:08d}.npz"
        with atomic_path(chunk) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        feats = {n: _NpzMember(chunk, f"features/{n}", f.shape) for n, f in rows.features.items()}
        return Rows(rows.keys, rows.stamps, rows.sha256, feats, rows.skipped_keys, rows.skipped_stamps,
                    rows.skipped_reasons)

    def read(self) -> list[Rows]:
        """The committed chunks, their features left on disk until needed."""
        parts = []
        for chunk in self.chunks():
            try:
                parts.append(self._lazy(chunk))
            except Exception:  # a chunk that cannot be read is recomputed, not trusted
                continue
        return parts

    @staticmethod
    def _lazy(chunk: Path) -> Rows:
        with np.load(chunk, allow_pickle=False) as z:
            feats = {}
            for k in z.files:
                if k.startswith("features/"):
                    x = z[k]  # read once: a damaged chunk fails here, not while writing the store
                    feats[k.split("/", 1)[1]] = _NpzMember(chunk, k, x.shape)
            return Rows(z["keys"], z["stamps"], z["sha256"], feats,
                        z["skipped_keys"], z["skipped_stamps"], z["skipped_reasons"])

    def clear(self) -> None:
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                p.unlink()
            self.dir.rmdir()
