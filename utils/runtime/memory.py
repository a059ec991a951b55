"""Out of memory, handled: a batch split into parts when the accelerator runs out of memory.

Training (``engine.train_one_epoch``, AUTO_MICRO_BATCH) splits each loader batch into
``parts`` micro-batches and multiplies the accumulation by the same factor, so the effective batch,
the schedule and the optimizer steps per epoch stay what they were; evaluation (``in_parts``)
splits its batches the same way. At one image per part nothing is left to split: one line names the
peak memory and the settings that lower it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from utils.runtime.device import memory_in_use_gb
from utils.runtime.errors import OutOfMemoryAtOneImageError

# What lowers the memory of one image, in the order to try.
MEMORY_SETTINGS = ("IMAGE_SIZE (a smaller input)", "GRADIENT_CHECKPOINTING=True (training)",
                   "PRECISION='bf16' (where the device supports it)")


def free_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def part_size(batch_size: int, parts: int) -> int:
    """Images in the largest of ``parts`` parts of a batch of ``batch_size``."""
    return math.ceil(batch_size / parts)


def batch_part(images: torch.Tensor, targets: Sequence, start: int, size: int) -> tuple[torch.Tensor, Sequence]:
    """Images ``start`` to ``start + size`` of a batch and their targets; the batch itself when that is all of it."""
    if start == 0 and size >= len(images):
        return images, targets
    return images[start:start + size], list(targets[start:start + size])


def split_batch(images: torch.Tensor, targets: Sequence, parts: int) -> list[tuple[torch.Tensor, Sequence]]:
    """(B, 3, H, W) images and their B targets as ``parts`` consecutive parts (the last may be smaller);
    ``parts == 1`` gives the batch itself."""
    size = part_size(len(images), parts)
    return [batch_part(images, targets, start, size) for start in range(0, len(images), size)]


def more_parts(parts: int, batch_size: int, device: torch.device, what: str) -> int:
    """The next split after an out-of-memory error: twice the parts (half the images per part), or
    OutOfMemoryAtOneImageError when a part already holds one image."""
    if part_size(batch_size, parts) <= 1:
        raise OutOfMemoryAtOneImageError(
            f"{what}: out of memory with one image per micro-batch (peak {memory_in_use_gb(device):.1f} GB on "
            f"{device}); lower the memory one image needs: {', '.join(MEMORY_SETTINGS)}")
    return parts * 2


def in_parts(process: Callable[[torch.Tensor, list], None], images: torch.Tensor, targets: Sequence, parts: int,
             device: torch.device, what: str) -> int:
    """``process(images, targets)`` over the batch in ``parts`` parts; on an out-of-memory error the
    part is split again (``more_parts``) and the batch continues from the first image not yet
    processed, so ``process`` must change nothing before it has run (compute first, then record).
    Returns the parts now in use, for the next batch."""
    done, batch_size = 0, len(images)
    while done < batch_size:
        size = part_size(batch_size, parts)
        try:
            process(*batch_part(images, targets, done, size))
            done += size
            continue
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed part's tensors
        free_cached_memory(device)
        parts = more_parts(parts, batch_size, device, what)
        print(f"{what}: out of memory; from now on in batches of {part_size(batch_size, parts)} images", flush=True)
    return parts
