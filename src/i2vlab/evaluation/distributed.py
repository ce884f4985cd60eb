"""Work split and gathering across ``torch.distributed`` ranks (torchrun); one process is world 1.

Metric states are reduced by torchmetrics itself; this module splits the videos into contiguous
chunks, gathers the per-video rows and counters to every rank, and provides a barrier.
"""

from __future__ import annotations

import math

import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def chunk(seq: list, rank: int, world: int) -> list:
    """The ``rank``-th of ``world`` contiguous chunks (the last may be shorter)."""
    per = math.ceil(len(seq) / world) if world > 1 else len(seq)
    return seq[rank * per : (rank + 1) * per]


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
