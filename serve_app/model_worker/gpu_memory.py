"""torch's allocator figures for one replica's device.

Off CUDA, or before CUDA was initialised, every reading is None and every
action does nothing, and torch is not imported: the worker runs the same
code on a CPU replica and in unit tests without a GPU.
"""

from __future__ import annotations


class GpuMemory:
    def __init__(self, device: str) -> None:
        self.device = device

    def cuda_ready(self) -> bool:
        if not self.device.startswith("cuda"):
            return False
        import torch

        return torch.cuda.is_initialized()

    def allocated(self) -> int | None:
        """Bytes held by tensors now."""
        if not self.cuda_ready():
            return None
        import torch

        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        if self.cuda_ready():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        """The most bytes held by tensors since `reset_peak`."""
        if not self.cuda_ready():
            return None
        import torch

        return torch.cuda.max_memory_allocated(self.device)

    def give_back_cached(self) -> None:
        """Return the allocator's cached, unused blocks to the driver."""
        if self.cuda_ready():
            import torch

            torch.cuda.empty_cache()
