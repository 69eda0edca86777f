"""How the processes that read and decode images are started."""
from __future__ import annotations

import multiprocessing

STANDARD = ("fork", "spawn", "forkserver")


def start_method(workers: int) -> str | None:
    """The ``multiprocessing_context`` for a DataLoader with ``workers`` processes: None
    (the default) unless whatever runs featx set a start method of its own, as joblib's
    loky workers do, which DataLoader cannot start processes with; then fork where the
    platform has it, else spawn."""
    method = multiprocessing.get_start_method(allow_none=True)
    if not workers or method is None or method in STANDARD:
        return None
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
