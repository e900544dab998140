"""QAT on several processes or machines: torch.distributed + DistributedDataParallel.

Launch with torchrun (`torchrun --nproc_per_node 2 train.py`); in the script:

>>> rank, world = lowbit.qat.distributed.init()               # gloo on CPU, NCCL on GPUs  # doctest: +SKIP
>>> qat = lowbit.qat.prepare(model, "int8", calib)              # same plan on every rank  # doctest: +SKIP
>>> ddp = lowbit.qat.distributed.wrap(qat)                                              # doctest: +SKIP
>>> data = lowbit.qat.distributed.loader(dataset, global_batch_size=256)                # doctest: +SKIP
>>> lowbit.qat.fit(ddp, data, epochs=1, lr=1e-4)                                        # doctest: +SKIP
>>> lowbit.qat.distributed.finish()                      # every rank, at the end      # doctest: +SKIP

Why the ranks stay identical: every rank computes the same plan from the same calibration data;
learned step sizes (LSQ) are parameters, so DDP all-reduces their gradients like the weights';
fixed step sizes never change; batch-statistics BN (bn='batch') reduces its statistics over all
ranks (as SyncBatchNorm). With `loader`, rank r reads items r, r + world, ... of each shuffled
global batch, so the averaged gradient is the single-process gradient of the same global batch:
the result equals single-process training up to floating-point reduction order.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lowbit.errors import ConfigError


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); returns
    (rank, world_size). Backend: NCCL where CUDA is available, gloo otherwise. Without torchrun's
    variables it is a single process: (0, 1)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist.get_rank(), dist.get_world_size()


def finish() -> None:
    """Leave the process group at the end of a torchrun worker: wait for every rank, free what still
    holds the group (a DDP wrapper no longer referenced, in a reference cycle), then destroy it. A
    rank that tears the group down while its peer is still at work, or leaves it to the
    interpreter's exit, can abort there ("terminate called without an active exception": seen
    once in CI, on 2 busy cores). No-op when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap(module: nn.Module, **ddp_kwargs: Any) -> nn.Module:
    """`module` in DistributedDataParallel when a process group is up, else `module` itself.
    Parameters are broadcast from rank 0 at wrap time, so every rank starts from the same point."""
    if world()[1] == 1:
        return module
    # buffers (fixed step sizes, BN running statistics) are kept equal by construction
    ddp_kwargs.setdefault("broadcast_buffers", False)
    return DistributedDataParallel(module, **ddp_kwargs)


def loader(dataset: Dataset, global_batch_size: int, *, shuffle: bool = True, seed: int = 0,
           **loader_kwargs: Any) -> DataLoader:
    """This rank's share of each global batch: `global_batch_size / world_size` items."""
    rank, size = world()
    if global_batch_size % size:
        raise ConfigError(f"the global batch size ({global_batch_size}) must divide by the number of processes "
                          f"({size}) for the ranks to see equal shares.")
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=global_batch_size // size, sampler=sampler, **loader_kwargs)


def max_divergence(module: nn.Module) -> float:
    """The largest difference of any parameter or buffer between this rank and rank 0 (0.0 when
    in sync). A collective: every rank must call it."""
    m = module.module if isinstance(module, DistributedDataParallel) else module
    worst = torch.zeros(())
    if world()[1] == 1:
        return 0.0
    for t in list(m.parameters()) + list(m.buffers()):
        ref = t.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (t.detach().float() - ref.float()).abs().max() if t.numel() else worst)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
