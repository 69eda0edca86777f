"""Where the heads' hyper-parameter sweeps run: joblib's backends.

A head with ``n_jobs`` runs its sweep as that many joblib tasks (see
``SweptHead._sweep_in_parts``). :func:`sweep_backend` chooses where the tasks go:

- ``loky`` (default): processes on this machine;
- ``dask``: a ``dask.distributed`` cluster at ``address``, or a local one started for
  the purpose (``pip install 'featx[dask]'``);
- ``ray``: a Ray cluster at ``address``, or a local one (``pip install ray``).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import joblib

from ..core.errors import FeatxError, ParameterError

BACKENDS = ("loky", "dask", "ray")


@contextmanager
def sweep_backend(name: str = "loky", address: str | None = None, workers: int | None = None):
    """Run the joblib tasks started inside the block on backend ``name``."""
    if name not in BACKENDS:
        raise ParameterError("sweep_backend", name, f"choose {', '.join(BACKENDS)}")
    with ExitStack() as stack:
        if name == "dask":
            try:
                from dask.distributed import Client, LocalCluster
            except ImportError:
                raise FeatxError("sweep backend dask: dask.distributed is not installed "
                                 "(pip install 'featx[dask]')") from None
            if address:
                stack.enter_context(Client(address))
            else:
                cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1,
                                                           processes=True, dashboard_address=None))
                stack.enter_context(Client(cluster))
        elif name == "ray":
            try:
                import ray
                from ray.util.joblib import register_ray
            except ImportError:
                raise FeatxError("sweep backend ray: ray is not installed (pip install ray)") from None
            register_ray()
            ray.init(address=address, ignore_reinit_error=True)
            stack.callback(ray.shutdown)
        stack.enter_context(joblib.parallel_config(backend=name))
        yield
