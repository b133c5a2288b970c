"""PyTorch's own distributed engine: one process per device, started by torchrun.

    torchrun --nproc_per_node=4 -m cifar100 train --preset seed
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \\
        -m cifar100 train --preset seed

Every rank holds the (small) dataset, draws the same global batch, augments it with the same
generator and trains on its own contiguous slice; DDP averages the gradients. So the run
equals one process with the same global batch, up to batch-norm statistics, which are
per rank unless train.sync_bn (CUDA only) makes them whole-batch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifar100.errors import ConfigError
from cifar100.runtime.device import select_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), select_device(device_name)
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        device, backend = torch.device("cuda", info.local_rank), "nccl"
    elif device_name in ("auto", "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise ConfigError(f"device {device_name!r} cannot run distributed; use cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env:// rendezvous, as torchrun sets it up
    global _joined
    _joined = True
    return info, device


_joined = False  # this process joined a process group (it runs under torchrun)


def exit_process(code: int) -> None:
    """End a process that joined a process group now, skipping interpreter shutdown.

    With PyTorch 2.13, a DistributedDataParallel model keeps its Gloo group alive after
    destroy_process_group(). The group's threads are then torn down during interpreter
    shutdown, where 2 of 96 finished 2-process runs aborted (SIGABRT, "terminate
    called without an active exception": a Gloo worker thread freeing a tensor could not
    take the GIL, seen in a core dump). Everything a run writes is on disk by now, atomically;
    only the standard streams need flushing. Other processes return normally.
    """
    if _joined:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `values` over ranks (in place) and return it."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every rank (e.g. the run directory it chose)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    box = [None] * info.world
    dist.all_gather_object(box, obj)
    return box


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def local_slice(n: int, info: DistInfo) -> slice:
    """This rank's contiguous part of a global batch of `n` (the ranks' parts tile it)."""
    per = n // info.world
    return slice(info.rank * per, (info.rank + 1) * per)
