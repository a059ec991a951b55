"""Everything torchrun needs, in one place: the process group, who this rank is, the samplers that
shard the data, and the collective operations the loops use.

Every rank holds the whole model; only SPDNet trains, so instead of a DistributedDataParallel wrapper
its gradients are averaged over ranks once per optimizer step (``all_reduce_mean_``) -- no
communication on accumulation micro-steps, nothing to unwrap when saving. Outside torchrun every
helper is a no-op for a world of one.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


def init_distributed(device: torch.device) -> tuple[torch.device, int, int]:
    """(device, rank, world size): under torchrun, this rank's GPU and a process group (NCCL on CUDA,
    gloo on CPU); otherwise ``device``, 0 and 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, rank, world_size


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean_(tensors: Sequence[torch.Tensor], world_size: int) -> None:
    """Average tensors over ranks in place, as one flat message."""
    if world_size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def all_reduce_sum_(tensor: torch.Tensor, world_size: int) -> None:
    """Sum a tensor over ranks in place."""
    if world_size > 1:
        dist.all_reduce(tensor)


def all_gather_objects(value, world_size: int) -> list:
    """Every rank's ``value``, in rank order (``[value]`` outside torchrun)."""
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled from seed + epoch, padded to equal shards) that can start mid-epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for ``epoch`` and skip its first ``start`` indices (those consumed before a resume)."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Every rank's share of an evaluation set, in order and without padding (no image scored twice)."""

    def __init__(self, dataset, num_replicas: int, rank: int):
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
