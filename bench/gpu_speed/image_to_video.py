"""Image to video: plain `WanImageToVideoPipeline.__call__` (the Wan2.2 5B configuration,
`expand_timesteps=True`, no image encoder) against the project's path, at preview and official.

The plain runs happen right after the text plain runs, before the project's set-up
compiles the shared DiT (`plain_image`); the project's after its exact text rows
(`project_image`). Official is a 3-step probe extrapolated to 50 steps, as for text.
The ratio should match text's.

The project's time includes what its video encoder does for an image job (fit +
VAE-encode the picture), as the plain call's does, and runs it as the service's
graph does (serve_app/graph.py `_run`): beside the prompt encoding, not before it
(overlap.py), the clock running until both are done. Plain diffusers encodes the
image after the prompt, one after the other, as its `__call__` does. The project's
rows carry each part's time (`image_encode_s`, `prompt_encode_s`, their wall time
together `encodes_wall_s`, `denoise_s`, `decode_s`), so a gap to text's ratio can
be read off: the official row's `step_vs_text` is the loop's step with per-token
timesteps against text's step with one timestep per sample.
"""

from __future__ import annotations

import statistics
import time

from bench.gpu_speed.harness import OFFICIAL_PROBE_STEPS, Bench
from bench.gpu_speed.overlap import Overlap, run_overlapped

IMAGE_SHA = "0" * 64  # marks the params as image to video (the store's key; unused here)


def _picture(width: int, height: int):
    """A picture of another size and aspect than the video's, so the fit runs too."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0 : height + 90, 0 : width + 160]
    rgb = np.stack([(x * 255 // x.max()), (y * 255 // y.max()), np.full_like(x, 128)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def _image_params(bench: Bench, preset: str, steps: int | None = None):
    return bench.params(preset, steps).model_copy(update={"input_reference_sha256": IMAGE_SHA})


def _plain_pipeline(bench: Bench):
    from diffusers import WanImageToVideoPipeline

    pipe = bench.pipe
    return WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        transformer=pipe.transformer,
        expand_timesteps=True,
    )


def plain_image(bench: Bench) -> None:
    from serve_app.images import fit_to_size

    image_pipe = _plain_pipeline(bench)
    image_pipe.set_progress_bar_config(disable=True)

    def call(params, on_step=None):
        h, w = params.height, params.width

        def cb(pipe, i, t, kw):
            if on_step is not None:
                on_step(i + 1)
            return {}

        return image_pipe(
            image=fit_to_size(_picture(w, h), w, h),
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            height=h,
            width=w,
            num_frames=params.num_frames,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=bench.torch.Generator(bench.device).manual_seed(params.seed),
            output_type="np",
            callback_on_step_end=cb if on_step else None,
        ).frames[0]

    bench.timed(lambda: call(_image_params(bench, "preview", steps=2)))
    p = _image_params(bench, "preview")
    times, peak = [], 0.0
    for _ in range(bench.preview_runs()):
        _, t, peak = bench.timed(lambda: call(p))
        times.append(t)
    bench.add_row(
        "image to video: preview 640x480x17, 20 steps",
        "plain",
        statistics.median(times),
        peak,
        runs=[round(x, 3) for x in times],
    )
    p = _image_params(bench, "official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: call(q, on_step), p)
    bench.add_row(
        "image to video: official 1280x704x121, 50 steps",
        "plain",
        total + (50 - OFFICIAL_PROBE_STEPS) * step,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        probe_total_s=round(total, 3),
        step_s=round(step, 4),
    )


def _project_stages():
    """The service's functions the project's image path calls: one place, so a unit test can put
    recording stand-ins here (tests/unit/test_bench_gpu.py)."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from serve_app.images import fit_to_size
    from serve_app.pipeline import stages
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.image_condition import encode_image

    def on_stream(stream):
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    return SimpleNamespace(
        fit_to_size=fit_to_size,
        encode_image=encode_image,
        encode_prompts=stages.encode_prompts,
        denoise_optimized=denoise_optimized,
        decode_to_mp4=stages.decode_to_mp4,
        on_stream=on_stream,
    )


def _video_encoder(bench: Bench):
    """The video encoder's stand-in, made once: one long-lived thread (a replica's model thread) and
    its own CUDA stream (None on a CPU). The prompt encoder and the video encoder are two replicas,
    whose kernels do not queue behind each other on one stream."""
    if not hasattr(bench, "video_encoder"):
        from concurrent.futures import ThreadPoolExecutor

        stream = bench.torch.cuda.Stream() if bench.cuda else None
        bench.video_encoder = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-video-encoder"), stream)
    return bench.video_encoder


def encodes(bench: Bench, params, stages=None) -> Overlap:
    """The two encodes an image job starts with, side by side as serve_app/graph.py `_run` starts them:
    the video encoder's (fit the picture, VAE-encode it, on its own stream) and the prompt encoder's."""
    stages = stages or _project_stages()
    h, w = params.height, params.width
    pool, stream = _video_encoder(bench)

    def image_part():
        with stages.on_stream(stream):
            latents = stages.encode_image(bench.pipe, stages.fit_to_size(_picture(w, h), w, h), h, w)
            if stream is not None:
                stream.synchronize()  # encode_image's .cpu() already waited; the part ends when its stream does
        return latents

    def text_part():
        return stages.encode_prompts(
            bench.pipe,
            params.prompt,
            params.negative_prompt,
            params.guidance_scale,
            bench.profile.max_sequence_length,
            encode=bench.encode_with_cache,
        )

    return run_overlapped(image_part, text_part, pool)


def project_image_call(bench: Bench, params, on_step=None, keep: dict | None = None):
    """One image job through the project's path: both encodes at once, the loop, decode + mp4."""
    from serve_app.deadline import Deadline, StepGuard

    stages = _project_stages()
    both = encodes(bench, params, stages)
    denoise_started = time.perf_counter()
    latents = stages.denoise_optimized(
        bench.runtime,
        params,
        both.text,
        StepGuard(Deadline.after(3600), params.num_inference_steps),
        on_step=(lambda s, t: on_step(s)) if on_step else None,
        image_latents=both.image,
    )
    decode_started = time.perf_counter()
    video = stages.decode_to_mp4(bench.pipe, latents, params.fps, mode=getattr(bench, "decode_mode", "streaming"))
    if keep is not None:
        keep["overlap"] = both
        keep["denoise_s"] = decode_started - denoise_started
        keep["decode_s"] = time.perf_counter() - decode_started
    return video


def _parts(keep: dict) -> dict:
    """A run's split, for the row: each encode alone, the pair's wall time, the loop, the decode."""
    both: Overlap = keep["overlap"]
    return {
        "image_encode_s": round(both.image_span.seconds, 3),
        "prompt_encode_s": round(both.text_span.seconds, 3),
        "encodes_wall_s": round(both.wall_s, 3),
        "overlap_saved_s": round(both.saved_s, 3),
        "denoise_s": round(keep["denoise_s"], 3),
        "decode_s": round(keep["decode_s"], 3),
    }


def project_image(bench: Bench) -> None:
    from torch._dynamo.utils import counters

    # The image graph (per-token timesteps) compiles here, as a replica's warm-up does.
    presets = ("preview", "official")
    shapes = [(p.height, p.width, p.num_frames) for p in (bench.params(n) for n in presets)]
    bench.runtime.warm_up(shapes, bench.profile.max_sequence_length, steps=2, guidance=(5.0,), image=True)
    # And the video encoder's (deployments/video_encoder.py): the VAE encoder's first call at each
    # size (cuDNN's algorithm search; the VAE section may have changed the weights' layout since
    # plain_image ran), the image stream's first allocations, the two encodes side by side once.
    for name in presets:
        encodes(bench, _image_params(bench, name))
    graphs_before = counters["stats"]["unique_graphs"]

    p = _image_params(bench, "preview")
    times, peak, splits, keep = [], 0.0, [], {}
    for _ in range(bench.preview_runs()):
        _, t, peak = bench.timed(lambda: project_image_call(bench, p, keep=keep))
        times.append(t)
        splits.append(_parts(keep))
    t = statistics.median(times)
    plain = _row(bench, "image to video: preview", "plain")
    text_ratio = _row(bench, "preview", "plain") / _row(bench, "preview", "project exact")
    bench.add_row(
        "image to video: preview 640x480x17, 20 steps",
        "project exact",
        t,
        peak,
        runs=[round(x, 3) for x in times],
        ratio=round(plain / t, 2),
        text_ratio=round(text_ratio, 2),
        # Each part's median over the runs (the row's time is the median of the whole runs).
        **{k: round(statistics.median(s[k] for s in splits), 3) for k in splits[0]},
    )
    p = _image_params(bench, "official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: project_image_call(bench, q, on_step, keep=keep), p)
    est = total + (50 - OFFICIAL_PROBE_STEPS) * step
    plain = _row(bench, "image to video: official", "plain")
    text_ratio = _row(bench, "official", "plain") / _row(bench, "official", "project exact")
    text_step = getattr(bench, "exact_official_step", None)
    bench.add_row(
        "image to video: official 1280x704x121, 50 steps",
        "project exact",
        est,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        probe_total_s=round(total, 3),
        step_s=round(step, 4),
        # The loop's step with per-token timesteps (their own compiled graph) against text's, with one
        # timestep per sample: the part of the gap that is the product's, not the encodes'.
        step_vs_text=round(step / text_step, 3) if text_step else None,
        ratio=round(plain / est, 2),
        text_ratio=round(text_ratio, 2),
        **_parts(keep),
    )
    # Zero unless a timed image run compiled something (a shape or guard the warm-up missed).
    bench.result["image_dynamo_graphs_compiled_while_timed"] = counters["stats"]["unique_graphs"] - graphs_before


def _row(bench: Bench, prefix: str, path: str) -> float:
    return next(r["time_s"] for r in bench.rows if r["path"] == path and r["setting"].startswith(prefix))
