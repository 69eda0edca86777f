"""Running under ``torchrun``: which process this is, and the few collectives featx needs.

featx does not schedule anything itself. Under ``torchrun`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous), every process runs the same
command; :func:`init_from_env` joins them into a ``torch.distributed`` group (NCCL when
each process has a GPU, Gloo otherwise), and the stages split their work by rank. A
plain run is a world of one, and every function here is then a no-op.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import FeatxError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the running group (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))))


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> World:
    """Join the group a launcher described in the environment; returns this process's place.

    The backend is NCCL when this process will compute on a GPU, else Gloo. Each process
    takes the GPU of its local rank.
    """
    if launched() and not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def shutdown(clean: bool = True) -> None:
    """Leave the group. After a command that ended well (``clean``), every process first
    waits for the others (a barrier), so that none closes its connections while a peer
    still uses them; after a failure nobody waits: a peer may never arrive. (How a
    process then exits: :func:`featx.cli._leave`.)"""
    if dist.is_available() and dist.is_initialized():
        if clean and world().size > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def any_of(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (one small all-reduce)."""
    if world().size == 1:
        return flag
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj, src: int = 0):
    """``obj`` as the process ``src`` has it, on every process."""
    if world().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_all(values: tuple) -> tuple:
    """Each of ``values`` summed over every process."""
    return tuple(sum(v) for v in zip(*gather(tuple(values))))


def gather(obj) -> list:
    """``obj`` from every process, in rank order, on every process."""
    if world().size == 1:
        return [obj]
    box = [None] * world().size
    dist.all_gather_object(box, obj)
    return box


def all_ok(error: BaseException | None) -> BaseException | None:
    """Every process says whether it failed; each gets back its own failure, or the first
    other one (by rank), so that all stop together instead of one waiting forever at the
    next collective."""
    messages = gather(None if error is None else str(error))
    rank, first = next(((r, m) for r, m in enumerate(messages) if m is not None), (None, None))
    if first is None or error is not None:
        return error
    return FeatxError(f"process {rank} of this featx job failed: {first}")


@contextmanager
def job_lock(take):
    """The lock ``take()`` returns (a context manager), held by the main process for the
    whole job; when it cannot be taken, every process stops with the same error."""
    if world().size == 1:
        with take():
            yield
        return
    with ExitStack() as stack:
        problem = None
        if world().is_main:
            try:
                stack.enter_context(take())
            except FeatxError as exc:
                problem = exc
        problem = broadcast(problem)
        if problem is not None:
            raise problem
        yield
