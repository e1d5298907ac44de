"""The three stages of `WanPipeline.__call__`, callable one at a time.

Together they are the same computation as `WanPipeline.__call__` (a test
holds them to it): `encode_prompts` is the pipeline's `encode_prompt`,
`denoise` is `__call__` with precomputed embeddings and `output_type="latent"`,
and `decode_latents` is the pipeline's tail (un-normalise, VAE decode,
post-process). Tensors leave a stage on the CPU, since they cross Ray
deployments and a CUDA tensor would land on whatever card the receiver has.

The serving path's faster equivalents: the denoising loop in `batching.py`
(`denoise_optimized`), and `decode_to_mp4` here, which decodes latent frame by
latent frame and encodes the mp4 while the GPU decodes the next chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from serve_app.deadline import StepGuard
from serve_app.params import GenerationParams

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
# (steps done, total steps, a thunk giving the denoised estimate): called just
# before the StepCallback; the thunk costs nothing unless called (previews).
LatentsCallback = Callable[[int, int, Callable[[], object]], None]


@dataclass
class PromptEmbeddings:
    prompt_embeds: object  # torch.Tensor [1, seq, dim]
    negative_prompt_embeds: object | None  # None when guidance is off
    encode_s: float = 0.0  # how long the text encoder took


def uses_guidance(guidance_scale: float) -> bool:
    # WanPipeline.do_classifier_free_guidance: guidance runs only above 1.0.
    return guidance_scale > 1.0


# Here rather than in preview.py, which renders it: both denoising loops (here and
# batching.py) call it, and preview.py imports this module to fit its projection.
def denoised_estimate(pipeline: Any, latents: Any) -> Any:
    """The scheduler's x0 prediction of the step just taken when it keeps one, else `latents`.

    UniPC (Wan's scheduler) stores the converted model output, which is the
    x0 estimate when `predict_x0` is on; it is a clean picture from the first
    step, where the current latents are still mostly noise.
    """
    scheduler = getattr(pipeline, "scheduler", None)
    outputs = getattr(scheduler, "model_outputs", None)
    if getattr(scheduler, "predict_x0", False) and outputs and outputs[-1] is not None:
        x0 = outputs[-1]
        if getattr(x0, "shape", None) == getattr(latents, "shape", None):
            return x0
    return latents


def encode_text(pipe, text: str, max_sequence_length: int):
    """One text's UMT5 embeddings [1, seq, dim] on the CPU.

    WanPipeline.encode_prompt encodes the prompt and the negative prompt in
    two separate text-encoder passes; this is one of them, so a caller can
    keep each text's embeddings on its own (the default negative prompt is
    the same for nearly every request).
    """
    import torch

    with torch.inference_mode():
        embeds, _ = pipe.encode_prompt(
            prompt=text,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=max_sequence_length,
            device=pipe.text_encoder.device,
        )
    return embeds.cpu()


def encode_prompts(
    pipe,
    prompt: str,
    negative_prompt: str,
    guidance_scale: float,
    max_sequence_length: int,
    encode: Callable[[str], object] | None = None,
) -> PromptEmbeddings:
    """The prompt's embeddings, and the negative prompt's when guidance is on.

    `encode(text)` replaces `encode_text` (the prompt encoder passes its
    per-text cache); the result equals WanPipeline.encode_prompt's.
    """
    import time

    started = time.perf_counter()
    encode = encode or (lambda text: encode_text(pipe, text, max_sequence_length))
    prompt_embeds = encode(prompt)
    negative = encode(negative_prompt) if uses_guidance(guidance_scale) else None
    return PromptEmbeddings(prompt_embeds, negative, time.perf_counter() - started)


def denoise(
    pipe,
    params: GenerationParams,
    embeddings: PromptEmbeddings,
    guard: StepGuard,
    on_step: StepCallback | None = None,
    max_sequence_length: int = 512,
    on_latents: LatentsCallback | None = None,
    image_latents=None,
):
    """The DiT loop; returns latents on the CPU or raises why it stopped early.

    `guard` is consulted after every step: when the deadline passes or the
    request is cancelled, the pipeline's own interrupt flag skips the
    remaining steps, so the GPU is free one step later. `image_latents`
    (image to video: the first frame, encoded by the video encoder) runs
    `WanImageToVideoPipeline.__call__` instead (image_condition.py).
    """
    import torch

    device = pipe._execution_device
    total = params.num_inference_steps
    generator = torch.Generator(device=device).manual_seed(params.seed)
    call, image_kwargs = pipe, {}
    shown: Callable[[Any], Any] = lambda x0: x0  # noqa: E731 - what a preview shows of the estimate
    if image_latents is not None:
        from serve_app.pipeline.image_condition import as_condition, image_pipeline, with_first_frame

        condition = as_condition(image_latents, device)
        call, image_kwargs = image_pipeline(pipe, int(condition.shape[1])), {"image": condition}
        shown = lambda x0: with_first_frame(x0, condition)  # noqa: E731

    def estimate(pipeline, latents_now):
        return shown(denoised_estimate(pipeline, latents_now))

    def step_end(pipeline, i, t, callback_kwargs):
        guard.steps_done = i + 1
        if on_latents is not None:
            # Read-only: the scheduler's state and the latents are only looked
            # at, so the loop computes exactly what the plain pipeline does.
            latents_now = callback_kwargs["latents"]
            on_latents(i + 1, total, lambda: estimate(pipeline, latents_now))
        if on_step is not None:
            on_step(i + 1, total)
        if guard.should_stop():
            pipeline._interrupt = True
        return {}

    if guard.should_stop():
        guard.raise_stop()
    npe = embeddings.negative_prompt_embeds
    with torch.inference_mode():
        (latents,) = call(
            prompt=None,
            prompt_embeds=embeddings.prompt_embeds.to(device),
            negative_prompt_embeds=None if npe is None else npe.to(device),
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            num_inference_steps=total,
            guidance_scale=params.guidance_scale,
            generator=generator,
            output_type="latent",
            return_dict=False,
            callback_on_step_end=step_end,
            max_sequence_length=max_sequence_length,
            **image_kwargs,
        )
    if guard.steps_done < total:
        guard.raise_stop()
    return latents.cpu()


def _vae_input(pipe, latents):
    """Latents -> what the VAE decodes: on its device and dtype, un-normalised (WanPipeline's tail)."""
    import torch

    vae = pipe.vae
    device = pipe._execution_device
    latents = torch.as_tensor(latents).to(device=device, dtype=vae.dtype)
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
    return latents / inv_std + mean


def decode_latents(pipe, latents):
    """Latents (tensor or array) -> float frames in [0, 1], shape (frames, height, width, 3).

    WanPipeline has no public decode step; this is its tail, line for line.
    With `pipe.vae.enable_tiling()` on, the VAE decodes in spatial tiles.
    """
    import torch

    with torch.inference_mode():
        video = pipe.vae.decode(_vae_input(pipe, latents), return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames[0]


def _to_uint8(video):
    """VAE output in [-1, 1] (1, 3, f, H, W) -> uint8 (f, H, W, 3) on the same device.

    The same arithmetic as `postprocess_video` (denormalise in the VAE's dtype,
    then float32) followed by `frames_to_uint8` (x255, round half to even), so
    the bytes equal the one-shot path's; done on the GPU it moves a quarter of
    the float32 bytes to the host.
    """
    import torch

    frames = (video * 0.5 + 0.5).clamp(0, 1)
    return torch.round(frames.float() * 255.0).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 3, 0)


def iter_decoded_frames(pipe, latents):
    """Decode latent frame by latent frame; yields uint8 (f, H, W, 3) chunks on the VAE's device.

    `AutoencoderKLWan._decode`'s loop with the frames handed out as each
    latent frame is decoded (1 frame, then 4 per latent frame), instead of
    concatenated: the mp4 encoder starts on the first chunk while the GPU
    decodes the next, and the whole float video never sits on the GPU.
    """
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae = pipe.vae
    with torch.inference_mode():
        x = vae.post_quant_conv(_vae_input(pipe, latents))
        vae.clear_cache()
        try:
            for i in range(x.shape[2]):
                vae._conv_idx = [0]
                out = vae.decoder(
                    x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0
                )
                if vae.config.patch_size is not None:
                    out = unpatchify(out, patch_size=vae.config.patch_size)
                yield _to_uint8(torch.clamp(out, min=-1.0, max=1.0))
        finally:
            vae.clear_cache()


@dataclass
class DecodedVideo:
    mp4: bytes
    thumbnail: bytes
    num_frames: int
    height: int
    width: int
    decode_s: float  # until the last frame left the GPU
    encode_s: float  # mp4 work after that (the part not overlapped with decoding)
    mode: str  # streaming | oneshot | tiled (tiled also after an out-of-memory retry) | parallel


def decode_to_mp4(
    pipe,
    latents,
    fps: int,
    mode: str = "streaming",
    tile_on_oom: bool = True,
    codec_options: dict[str, str] | None = None,
) -> DecodedVideo:
    """Latents -> mp4 and thumbnail, decoding and encoding overlapped in 'streaming' mode.

    'oneshot' is WanPipeline's decode then one encode; 'tiled' the same with
    `vae.enable_tiling()`, the fallback when a full-frame decode does not fit
    (`tile_on_oom` retries an out-of-memory decode that way).
    """
    import torch

    if mode == "streaming":
        try:
            return _decode_streaming(pipe, latents, fps, codec_options)
        except torch.OutOfMemoryError:
            if not tile_on_oom:
                raise
            torch.cuda.empty_cache()
            mode = "tiled"
    if mode == "oneshot":
        try:
            return _decode_oneshot(pipe, latents, fps, codec_options, "oneshot")
        except torch.OutOfMemoryError:
            if not tile_on_oom:
                raise
            torch.cuda.empty_cache()
            mode = "tiled"
    if mode != "tiled":
        raise ValueError(f"decode mode={mode!r} is not one of ['streaming', 'oneshot', 'tiled']")
    was_tiling = pipe.vae.use_tiling
    pipe.vae.enable_tiling()
    try:
        return _decode_oneshot(pipe, latents, fps, codec_options, "tiled")
    finally:
        if not was_tiling:
            pipe.vae.disable_tiling()


def _decode_oneshot(pipe, latents, fps, codec_options, mode: str) -> DecodedVideo:
    import time

    from serve_app.video import encode_mp4, frames_to_uint8, make_thumbnail

    started = time.perf_counter()
    frames = frames_to_uint8(decode_latents(pipe, latents))
    decoded = time.perf_counter()
    mp4 = encode_mp4(frames, fps, codec_options)
    thumbnail = make_thumbnail(frames)
    n, h, w, _ = frames.shape
    return DecodedVideo(mp4, thumbnail, n, h, w, decoded - started, time.perf_counter() - decoded, mode)


def _decode_streaming(pipe, latents, fps, codec_options) -> DecodedVideo:
    import time

    started = time.perf_counter()
    latent_frames = int(latents.shape[2])
    num_frames = (latent_frames - 1) * pipe.vae_scale_factor_temporal + 1
    height = int(latents.shape[3]) * pipe.vae_scale_factor_spatial
    width = int(latents.shape[4]) * pipe.vae_scale_factor_spatial
    return stream_to_mp4(
        iter_decoded_frames(pipe, latents),
        (num_frames, height, width),
        fps,
        codec_options,
        cuda=pipe._execution_device.type == "cuda",
        started=started,
    )


def stream_to_mp4(
    chunks: Iterable,
    shape: tuple[int, int, int],
    fps: int,
    codec_options: dict[str, str] | None,
    *,
    cuda: bool,
    started: float,
    mode: str = "streaming",
    drain_on_error: bool = False,
) -> DecodedVideo:
    """uint8 chunks (n, H, W, 3) -> mp4: the producer (GPU) makes chunk i+1 while a thread encodes chunk i
    (x264 releases the GIL in PyAV). `shape` is the whole video's (frames, height, width).

    `drain_on_error` keeps pulling chunks after the encoder failed (the error is
    raised once they run out): a parallel decode's chunks come from collectives
    that every rank must finish, so rank 0 may not stop early.
    """
    import queue
    import threading
    import time

    import torch

    from serve_app.video import Mp4Writer, make_thumbnail

    num_frames, height, width = shape
    middle = num_frames // 2
    pending: queue.Queue = queue.Queue()
    writer = Mp4Writer(fps, width, height, codec_options)
    state: dict = {"error": None, "thumbnail_frame": None}

    def encode_worker():
        first = 0
        try:
            while True:
                item = pending.get()
                if item is None:
                    return
                host, event = item
                if event is not None:
                    event.synchronize()
                frames = host.numpy()
                if first <= middle < first + len(frames):
                    state["thumbnail_frame"] = frames[middle - first].copy()
                writer.write(frames)
                first += len(frames)
        except BaseException as exc:  # noqa: BLE001 - surfaced on the decoding thread after join
            state["error"] = exc
            while pending.get() is not None:  # drain so the producer never blocks
                pass

    worker = threading.Thread(target=encode_worker, name="mp4-encode", daemon=True)
    worker.start()
    try:
        for chunk in chunks:
            if cuda:
                # Pinned host memory + event: the copy runs behind the next
                # chunk's decode kernels instead of stalling the launch thread.
                host = torch.empty(chunk.shape, dtype=torch.uint8, pin_memory=True)
                host.copy_(chunk, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending.put((host, event))
            else:
                pending.put((chunk, None))
            if state["error"] is not None and not drain_on_error:
                break
    except BaseException:
        pending.put(None)
        worker.join()
        writer.abort()
        raise
    pending.put(None)
    if cuda:
        torch.cuda.current_stream().synchronize()
    decoded = time.perf_counter()
    worker.join()
    if state["error"] is not None:
        writer.abort()
        raise state["error"]
    mp4 = writer.close()
    if writer.frames != num_frames:
        raise RuntimeError(f"{mode} decode produced {writer.frames} frames, expected {num_frames}")
    thumbnail = make_thumbnail(state["thumbnail_frame"][None])
    return DecodedVideo(
        mp4, thumbnail, num_frames, height, width, decoded - started, time.perf_counter() - decoded, mode
    )
