"""Where this process stands in a multi-GPU run (``torchrun`` / ``accelerate launch``).

Under a launcher every process runs the same sweep; each run is one data-parallel job over
``WORLD_SIZE`` processes through the Trainer. Only rank 0 writes results and holds run locks.
An update always sees ``train.batch_size x train.grad_accum`` blocks, whatever the world size:
each device accumulates ``grad_accum / WORLD_SIZE`` micro-batches. Nothing here imports torch.
"""

from __future__ import annotations

import os

from ..errors import ConfigError

__all__ = ["process_rank", "world_size", "is_main_process", "accumulation_per_device"]


def process_rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes taking part in each run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the process that writes results (rank 0)."""
    return process_rank() == 0


def accumulation_per_device(batch_size: int, grad_accum: int, world: int) -> int:
    """Micro-batches each of ``world`` devices accumulates per update.

    The global batch, ``batch_size x grad_accum`` blocks, is split evenly over the devices.

    Example
    -------
    >>> accumulation_per_device(4, 8, world=4)   # 32 blocks: 4 per micro-batch x 2 x 4 GPUs
    2
    """
    if world < 1:
        raise ConfigError(f"world size = {world}, must be >= 1")
    if grad_accum % world:
        raise ConfigError(
            f"train.grad_accum = {grad_accum} does not split over {world} devices: an update of "
            f"{batch_size} x {grad_accum} = {batch_size * grad_accum} blocks needs grad_accum to be a "
            f"multiple of the world size; use grad_accum = {world * max(1, round(grad_accum / world))} "
            f"(and adjust batch_size) or launch on a number of GPUs that divides {grad_accum}"
        )
    return grad_accum // world
