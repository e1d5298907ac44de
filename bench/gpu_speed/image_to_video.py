"""Image to video: plain `WanImageToVideoPipeline.__call__` (the Wan2.2 5B configuration,
`expand_timesteps=True`, no image encoder) against the project's path, at preview and official.

The plain runs happen right after the text plain runs, before the project's set-up
compiles the shared DiT (`plain_image`); the project's after its exact text rows
(`project_image`). The project's time includes what its video encoder does for an
image job (fit + VAE-encode the picture), as the plain call's does. Official is a
3-step probe extrapolated to 50 steps, as for text. The ratio should match text's.
"""

from __future__ import annotations

import statistics

from bench.gpu_speed.harness import OFFICIAL_PROBE_STEPS, Bench

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
    for _ in range(3):
        _, t, peak = bench.timed(lambda: call(p))
        times.append(t)
    bench.add_row("image to video: preview 640x480x17, 20 steps", "plain", statistics.median(times), peak)
    p = _image_params(bench, "official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: call(q, on_step), p)
    bench.add_row(
        "image to video: official 1280x704x121, 50 steps",
        "plain",
        total + (50 - OFFICIAL_PROBE_STEPS) * step,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        step_s=round(step, 4),
    )


def project_image(bench: Bench) -> None:
    from serve_app.deadline import Deadline, StepGuard
    from serve_app.images import fit_to_size
    from serve_app.pipeline import stages
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.image_condition import encode_image

    def call(params, on_step=None):
        h, w = params.height, params.width
        # The video encoder's part of an image job: fit the picture, VAE-encode it.
        image_latents = encode_image(bench.pipe, fit_to_size(_picture(w, h), w, h), h, w)
        emb = stages.encode_prompts(
            bench.pipe,
            params.prompt,
            params.negative_prompt,
            params.guidance_scale,
            bench.profile.max_sequence_length,
            encode=bench.encode_with_cache,
        )
        latents = denoise_optimized(
            bench.runtime,
            params,
            emb,
            StepGuard(Deadline.after(3600), params.num_inference_steps),
            on_step=(lambda s, t: on_step(s)) if on_step else None,
            image_latents=image_latents,
        )
        return stages.decode_to_mp4(bench.pipe, latents, params.fps, mode=getattr(bench, "decode_mode", "streaming"))

    # The image graph (per-token timesteps) compiles here, as a replica's warm-up does.
    shapes = [(p.height, p.width, p.num_frames) for p in (bench.params(n) for n in ("preview", "official"))]
    bench.runtime.warm_up(shapes, bench.profile.max_sequence_length, steps=2, guidance=(5.0,), image=True)
    p = _image_params(bench, "preview")
    times, peak = [], 0.0
    for _ in range(3):
        _, t, peak = bench.timed(lambda: call(p))
        times.append(t)
    t = statistics.median(times)
    plain = _row(bench, "image to video: preview", "plain")
    text_ratio = _row(bench, "preview", "plain") / _row(bench, "preview", "project exact")
    bench.add_row(
        "image to video: preview 640x480x17, 20 steps",
        "project exact",
        t,
        peak,
        ratio=round(plain / t, 2),
        text_ratio=round(text_ratio, 2),
    )
    p = _image_params(bench, "official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: call(q, on_step), p)
    est = total + (50 - OFFICIAL_PROBE_STEPS) * step
    plain = _row(bench, "image to video: official", "plain")
    text_ratio = _row(bench, "official", "plain") / _row(bench, "official", "project exact")
    bench.add_row(
        "image to video: official 1280x704x121, 50 steps",
        "project exact",
        est,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        step_s=round(step, 4),
        ratio=round(plain / est, 2),
        text_ratio=round(text_ratio, 2),
    )


def _row(bench: Bench, prefix: str, path: str) -> float:
    return next(r["time_s"] for r in bench.rows if r["path"] == path and r["setting"].startswith(prefix))
