"""The ranks of one multi-GPU replica as a `torch.distributed` group, and the DiT split over it.

NCCL on GPUs, gloo on CPUs (tests and CI run the same code on the tiny model).
Every collective has the group's timeout: a dead or hung rank makes the
others' next collective fail within `timeout_s` instead of waiting forever
(NCCL's watchdog then ends the process, so the rank actor dies and the
replica is replaced; see deployments/parallel_denoiser.py).

torch is imported inside functions, as everywhere in the pipeline.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from serve_app.pipeline.parallel.layout import ParallelLayout

log = logging.getLogger("ray.serve")


@dataclass
class ParallelGroup:
    rank: int
    world: int
    layout: ParallelLayout
    device: Any  # torch.device: cuda:0 inside a rank actor (Ray sets CUDA_VISIBLE_DEVICES), or cpu
    backend: str  # "nccl" | "gloo"
    world_group: Any  # ProcessGroup over all ranks
    cfg_group: Any  # ProcessGroup over the ranks at the same Ulysses position (size cfg_degree)
    mesh: Any  # DeviceMesh ("cfg", "ring", "ulysses")
    closed: bool = field(default=False)

    @classmethod
    def join(
        cls,
        rank: int,
        world: int,
        master_addr: str,
        master_port: int,
        timeout_s: float,
        heads: int,
        cfg_parallel: bool = True,
    ) -> ParallelGroup:
        """Join the replica's group (blocks until all `world` ranks joined, or `timeout_s`)."""
        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        layout = ParallelLayout.plan(world, heads, cfg_parallel)
        cuda = torch.cuda.is_available()
        # NVLink multicast (NVLS) off: the GPU hosts here ask for it, and Ulysses'
        # all-to-all does not use it.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        if cuda:
            device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if cuda else None,
        )
        mesh = init_device_mesh(
            device.type, (layout.cfg_degree, 1, layout.ulysses_degree), mesh_dim_names=("cfg", "ring", "ulysses")
        )
        group = cls(rank, world, layout, device, backend, dist.group.WORLD, mesh["cfg"].get_group(), mesh)
        log.info("rank %d/%d joined (%s, %s, layout %s)", rank, world, backend, device, layout.describe())
        return group

    # --- the DiT ------------------------------------------------------------------------

    def enable_context_parallel(self, transformer, any_length: bool = False) -> bool:
        """Split `transformer`'s tokens over this rank's guidance half (diffusers' Ulysses).

        `any_length`: diffusers' "Ulysses anything" mode, for token counts the
        degree does not divide; it learns the shard sizes with an extra small
        collective in every attention call, so the runtime keeps a second,
        weight-sharing copy in this mode for such shapes only (rank.py).
        False (nothing to split) when the half is a single rank.
        """
        if self.layout.ulysses_degree == 1:
            return False
        from diffusers import ContextParallelConfig

        config = ContextParallelConfig(
            ulysses_degree=self.layout.ulysses_degree, ulysses_anything=any_length, mesh=self.mesh["ring", "ulysses"]
        )
        with _one_device_per_rank(self.device):
            transformer.enable_parallelism(config=config)
        if self.backend == "gloo" and any_length:
            _let_gloo_gather_uneven_shards()
        return True

    # --- collectives the loop needs -------------------------------------------------------

    def broadcast_from_first(self, tensor):
        """Rank 0's `tensor` on every rank (same shape and dtype everywhere)."""
        import torch.distributed as dist

        tensor = tensor.contiguous()
        dist.broadcast(tensor, src=0, group=self.world_group)
        return tensor

    def gather_cfg(self, tensor):
        """Each guidance half's `tensor`, in half order: [prompt pass's, negative prompt pass's]."""
        import torch
        import torch.distributed as dist

        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.layout.cfg_degree)]
        dist.all_gather(parts, tensor, group=self.cfg_group)
        return parts

    def gather_to_first(self, tensor, dim: int):
        """Every rank's `tensor` concatenated along `dim` on rank 0 (sizes along `dim` may differ); None elsewhere."""
        import torch

        parts = _all_gather_uneven(tensor.contiguous(), dim, self.world_group)
        return torch.cat(parts, dim=dim) if self.rank == 0 else None

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when any rank passed True: how the ranks agree to stop at the same step."""
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.world_group)
        return bool(value.item())

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.world_group)

    def close(self) -> None:
        import torch.distributed as dist

        if not self.closed and dist.is_initialized():
            dist.destroy_process_group()
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "backend": self.backend, "device": str(self.device), **self.layout.describe()}


@contextmanager
def _one_device_per_rank(device):
    """diffusers picks a rank's device as `rank % torch.accelerator.device_count()`, which
    divides by zero on a CPU host; there each rank's device is the CPU, so say 1 device."""
    import torch

    if device.type != "cpu":
        yield
        return
    real = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = real  # type: ignore[assignment]


def _all_gather_uneven(tensor, dim: int, group) -> list:
    """all_gather of shards whose size along `dim` differs by rank. NCCL accepts that as is;
    gloo needs equal sizes, so every shard is padded to the largest and trimmed after."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([tensor.shape[dim]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    pad = list(tensor.shape)
    pad[dim] = longest - tensor.shape[dim]
    padded = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim) if pad[dim] else tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return [part.narrow(dim, 0, n) for part, n in zip(parts, lengths)]


def _let_gloo_gather_uneven_shards() -> None:
    """diffusers' "Ulysses anything" gathers the DiT's output shards with one uneven
    `all_gather`, which gloo refuses; on gloo groups, gather padded shards instead
    (same result). Only CPU runs (tests, CI) take this path; NCCL runs diffusers' own."""
    from diffusers.hooks import context_parallel

    if getattr(context_parallel._all_gather_anything, "__wan_serve_gloo__", False):
        return

    def gather(tensor, dim, group):
        import torch

        return torch.cat(_all_gather_uneven(tensor.contiguous(), dim, group), dim=dim)

    gather.__wan_serve_gloo__ = True  # type: ignore[attr-defined]
    context_parallel._all_gather_anything = gather
