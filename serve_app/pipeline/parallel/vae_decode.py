"""Parallel VAE decode: each rank of a multi-GPU replica decodes one spatial stripe; rank 0 gathers.

The Wan VAE is causal in time (each latent frame's decode reads caches that the
frames before it left), so time cannot be split without changing the answer;
space can. Each rank decodes the whole time axis of one stripe of the frame
(the latent's longer side cut into `world` pieces), and rank 0 gathers every
chunk of frames as it comes (1 frame, then 4 per latent frame), so the mp4
encoder starts on the first chunk, as in `stages.decode_to_mp4`'s streaming mode.

Exact, not blended. The decoder's one non-local layer is the single-head
spatial attention of its middle block, at latent resolution: every rank runs
the input conv and the middle block on the whole frame (1.4% of the decoder's
FLOPs) and cuts after them. What follows is 3x3 convolutions, nearest 2x
upsamplings and pixel shuffles: a stripe cut with as many rows of context as
that part's receptive field decodes to the whole frame's pixels. The damage
from a cut (zeros where the neighbour's rows should be) moves inwards one row
per 3x3 conv, through the causal time caches too (a cache holds the same
layer's input for earlier frames, cut the same way). After every up block the
context is cut again to what the layers left need (`decoder_context`): for the
5B's VAE 13 latent rows after the middle block, then 12 rows at 2x, 10 at 4x
and 7 at 8x, so the costly high-resolution blocks carry under one latent row
of overlap. On the tiny model two processes give one process's frames to
float32 rounding (1 level at most; tests/unit/test_parallel_vae_decode.py);
`halo` below that context shows what a plain overlap would cost (docs/gpu.md,
"Parallel VAE decode").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from serve_app.pipeline import stages

HEIGHT, WIDTH = 3, 4  # the split axis, as a dim of the latents (batch, channels, frames, height, width)


@dataclass(frozen=True)
class DecoderContext:
    """Where the decoder is cut, and how much context each cut keeps for an exact stripe.

    Cut points: after the middle block, after each up block, and the decoder's
    output. `scales[i]` is the resolution at cut i relative to the latent,
    `margins[i]` the rows of context (at that resolution) the layers after it read.
    """

    scales: tuple[int, ...]
    margins: tuple[int, ...]

    @property
    def halo(self) -> int:
        """Latent rows of context after the middle block: the exact stripe's overlap."""
        return self.margins[0]


def _radius(conv: Any, axis: int) -> int:
    # kernel_size is (t, h, w) for the causal Conv3d, (h, w) for the upsamplers' Conv2d.
    return int(conv.kernel_size[-2 if axis == HEIGHT else -1]) // 2


def _block_context(block: Any, margin_out: int, axis: int) -> tuple[int, int]:
    """(rows of context an up block reads at its input, its upsampling factor) for `margin_out` rows at its output."""
    upsampler = getattr(block, "upsampler", None)  # WanResidualUpBlock (2.2); WanUpBlock (2.1) has a list
    if upsampler is None and getattr(block, "upsamplers", None):
        upsampler = block.upsamplers[0]
    margin, factor = margin_out, 1
    if upsampler is not None and str(upsampler.mode).startswith("upsample"):
        upsample, conv = upsampler.resample[0], upsampler.resample[1]
        factor = int(upsample.scale_factor[0])
        # The conv runs after the nearest-neighbour upsampling; its time conv is 3x1x1 (no rows).
        margin = math.ceil((margin + _radius(conv, axis)) / factor)
    for resnet in block.resnets:
        shortcut = resnet.conv_shortcut
        through = _radius(resnet.conv1, axis) + _radius(resnet.conv2, axis)
        margin += max(through, _radius(shortcut, axis) if hasattr(shortcut, "kernel_size") else 0)
    return margin, factor


def decoder_context(decoder: Any, axis: int = HEIGHT) -> DecoderContext:
    """The context each cut of `decoder` (diffusers' WanDecoder3d) needs, walked from its layers."""
    blocks = list(decoder.up_blocks)
    margins = [0, _radius(decoder.conv_out, axis)]  # reversed: the output, then the last up block's output
    factors = []
    for block in reversed(blocks):
        margin, factor = _block_context(block, margins[-1], axis)
        margins.append(margin)
        factors.append(factor)
    scales = [1]
    for factor in reversed(factors):
        scales.append(scales[-1] * factor)
    scales.append(scales[-1])
    return DecoderContext(tuple(scales), tuple(reversed(margins)))


@dataclass(frozen=True)
class StripePlan:
    """Which latent rows (or columns) along `axis` each rank decodes: rank r owns [bounds[r][0], bounds[r][1])."""

    axis: int
    size: int
    bounds: tuple[tuple[int, int], ...]

    @property
    def widest(self) -> int:
        return max(stop - start for start, stop in self.bounds)


def plan_stripes(latent_height: int, latent_width: int, world: int) -> StripePlan:
    """Cut the longer side (height on a tie) into `world` stripes as even as rows allow.

    The longer side makes the fixed overlap a smaller share of each stripe.
    With fewer rows than ranks, the last ranks get empty stripes and only
    take part in the gathers.
    """
    if world < 1:
        raise ValueError(f"world={world} must be at least 1")
    axis = WIDTH if latent_width > latent_height else HEIGHT
    size = latent_width if axis == WIDTH else latent_height
    base, extra = divmod(size, world)
    bounds, start = [], 0
    for rank in range(world):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return StripePlan(axis, size, tuple(bounds))


@contextmanager
def _stripe_cuts(decoder: Any, plan: StripePlan, rank: int, context: DecoderContext, halo: int | None):
    """While open, `decoder` decodes only rank's stripe: forward hooks cut the middle block's,
    each up block's and the decoder's outputs to the stripe plus the context the layers after need.

    `halo` (latent rows) caps that context, for measuring what a plain overlap costs; None is exact.
    The hooks are the decoder's state while open, like its time caches: one decode at a time per VAE.
    """
    start, stop = plan.bounds[rank]
    windows = []
    for scale, margin in zip(context.scales, context.margins):
        if halo is not None:
            margin = min(margin, halo * scale)
        windows.append((max(0, start * scale - margin), min(plan.size * scale, stop * scale + margin)))
    modules = [decoder.mid_block, *decoder.up_blocks, decoder]
    assert len(modules) == len(windows), (len(modules), len(windows))

    def cut(index: int):
        low, high = windows[index]
        # What arrives: the previous cut, upsampled by the layers between (the whole side at the first).
        if index == 0:
            arriving_low, arriving = 0, plan.size
        else:
            factor = context.scales[index] // context.scales[index - 1]
            arriving_low = windows[index - 1][0] * factor
            arriving = (windows[index - 1][1] - windows[index - 1][0]) * factor

        def hook(module, args, output):
            if output.shape[plan.axis] != arriving:
                raise RuntimeError(
                    f"parallel decode: {type(module).__name__} gave {output.shape[plan.axis]} rows on dim "
                    f"{plan.axis}, the stripe plan expected {arriving}"
                )
            return output.narrow(plan.axis, low - arriving_low, high - low)

        return hook

    handles = [module.register_forward_hook(cut(i)) for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _chunk_frames(pipe: Any, latent_frames: int) -> list[int]:
    # The causal VAE: the first latent frame decodes to 1 frame, each later one to `temporal`.
    return [1] + [pipe.vae_scale_factor_temporal] * (latent_frames - 1)


def _own_chunks(pipe: Any, latents: Any, plan: StripePlan, rank: int, halo: int | None) -> Iterator[Any]:
    """This rank's stripe, uint8 chunks (n, rows, W, 3) or (n, H, columns, 3), on the VAE's device."""
    import torch

    start, stop = plan.bounds[rank]
    if stop == start:
        spatial = pipe.vae_scale_factor_spatial
        height, width = (int(latents.shape[d]) * spatial for d in (HEIGHT, WIDTH))
        side = (0, width) if plan.axis == HEIGHT else (height, 0)
        for frames in _chunk_frames(pipe, int(latents.shape[2])):
            yield torch.zeros((frames, *side, 3), dtype=torch.uint8, device=pipe._execution_device)
        return
    context = decoder_context(pipe.vae.decoder, plan.axis)
    with _stripe_cuts(pipe.vae.decoder, plan, rank, context, halo):
        yield from stages.iter_decoded_frames(pipe, latents)


def iter_gathered_frames(pipe: Any, latents: Any, group: Any, halo: int | None = None) -> Iterator[Any | None]:
    """COLLECTIVE. Chunks of whole frames, uint8 (n, H, W, 3) on rank 0's VAE device; None on the other ranks.

    Every rank must call it with the same latents and consume it to the end: each
    chunk is one `gather` over `group.world_group`. Stripes differ in size by a
    row at most; gather needs equal sizes (gloo), so each is padded to the widest.
    """
    import torch
    import torch.distributed as dist

    latents = torch.as_tensor(latents)
    if group.world == 1:
        yield from stages.iter_decoded_frames(pipe, latents)
        return
    plan = plan_stripes(int(latents.shape[HEIGHT]), int(latents.shape[WIDTH]), group.world)
    spatial = pipe.vae_scale_factor_spatial
    frame_axis = 1 if plan.axis == HEIGHT else 2  # the split side in a (n, H, W, 3) chunk
    padded_rows = plan.widest * spatial
    first = dist.get_global_rank(group.world_group, 0)
    for chunk in _own_chunks(pipe, latents, plan, group.rank, halo):
        shape = list(chunk.shape)
        shape[frame_axis] = padded_rows
        padded = torch.zeros(shape, dtype=torch.uint8, device=chunk.device)
        padded.narrow(frame_axis, 0, chunk.shape[frame_axis]).copy_(chunk)
        if group.rank != 0:
            dist.gather(padded, None, dst=first, group=group.world_group)
            yield None
            continue
        pieces = [torch.empty_like(padded) for _ in range(group.world)]
        dist.gather(padded, pieces, dst=first, group=group.world_group)
        yield torch.cat(
            [
                piece.narrow(frame_axis, 0, (stop - start) * spatial)
                for piece, (start, stop) in zip(pieces, plan.bounds)
            ],
            dim=frame_axis,
        )


def decode_parallel(pipe: Any, latents: Any, group: Any, halo: int | None = None):
    """COLLECTIVE. Latents (1, C, T, h, w), the same on every rank -> uint8 frames (F, H, W, 3) as a
    numpy array on rank 0, None on the others. With one rank: exactly `decode_latents`'s frames as uint8.

    `group` is a ParallelGroup (parallel/group.py): only rank, world and world_group
    are read. `halo` caps the stripes' overlap (latent rows) below the exact context, to
    measure what a cheaper cut costs; leave it None.
    """
    import torch

    chunks = [chunk.cpu() for chunk in iter_gathered_frames(pipe, latents, group, halo) if chunk is not None]
    return torch.cat(chunks).numpy() if group.rank == 0 else None


def decode_to_mp4_parallel(
    pipe: Any, latents: Any, fps: int, group: Any, codec_options: dict[str, str] | None = None
) -> stages.DecodedVideo | None:
    """COLLECTIVE. The parallel decode streamed into an mp4 and thumbnail on rank 0 (mode "parallel");
    None on the other ranks. Rank 0 encodes chunk i while the ranks decode chunk i+1."""
    import torch

    started = time.perf_counter()
    latents = torch.as_tensor(latents)
    chunks = iter_gathered_frames(pipe, latents, group)
    if group.rank != 0:
        for _ in chunks:
            pass
        return None
    spatial = pipe.vae_scale_factor_spatial
    shape = (
        (int(latents.shape[2]) - 1) * pipe.vae_scale_factor_temporal + 1,
        int(latents.shape[HEIGHT]) * spatial,
        int(latents.shape[WIDTH]) * spatial,
    )
    return stages.stream_to_mp4(
        chunks,
        shape,
        fps,
        codec_options,
        cuda=pipe._execution_device.type == "cuda",
        started=started,
        mode="parallel",
        # The other ranks wait in each chunk's gather: rank 0 keeps gathering after an encode error.
        drain_on_error=True,
    )
