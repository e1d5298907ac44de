"""Fractional GPUs done honestly: a replica's allocator stays within its share of the card.

Ray's `num_gpus: 0.5` only books half a card in the scheduler; nothing stops
the process from allocating all of it and running its neighbours out of
memory. `cap_gpu_memory` makes the booking real for PyTorch's caching
allocator (`torch.cuda.set_per_process_memory_fraction`): an allocation past
the share raises `torch.cuda.OutOfMemoryError` in this replica, which
recovers from it (serve_app/model_worker), instead of in a neighbour.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ray.serve")


def cap_gpu_memory(fraction: float | None, device: str) -> float | None:
    """Cap this process's allocations on `device` to `fraction` of the card; the cap set, or None."""
    if fraction is None or not device.startswith("cuda"):
        return None
    import torch

    # "cuda" names no card; torch wants an index (Ray's CUDA_VISIBLE_DEVICES makes it 0).
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    total = torch.cuda.get_device_properties(index).total_memory
    log.info("GPU memory capped to %.0f%% of %s (%.1f GiB)", fraction * 100, device, fraction * total / 2**30)
    return fraction
