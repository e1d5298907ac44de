"""The VAE: bf16 vs fp32, Conv3d weight layouts, decode modes, x264 settings, fused norms.

What measures faster stays on for the project path that later sections run:
the Conv3d layout, the decode mode (oneshot or streaming) and the fused norms.
"""

from __future__ import annotations

import copy
import time

from bench.gpu_speed.harness import Bench, log, psnr
from serve_app.deadline import Deadline, StepGuard


def vae(bench: Bench) -> None:
    """VAE precision, layout and decode modes; leaves the faster Conv3d layout on for the project path."""
    torch = bench.torch
    from serve_app.pipeline import stages
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.optimize import set_vae_channels_last
    from serve_app.video import encode_mp4, frames_to_uint8

    out = {}
    p = bench.params("preview")
    emb = stages.encode_prompts(
        bench.pipe, p.prompt, p.negative_prompt, p.guidance_scale, bench.profile.max_sequence_length
    )
    lat = denoise_optimized(bench.runtime, p, emb, StepGuard(Deadline.after(3600), p.num_inference_steps))
    bf16 = frames_to_uint8(stages.decode_latents(bench.pipe, lat))
    vae_bf16 = bench.pipe.vae
    bench.pipe.vae = copy.deepcopy(vae_bf16).float()
    try:
        stages.decode_latents(bench.pipe, lat)
        fp32, t32, _ = bench.timed(lambda: frames_to_uint8(stages.decode_latents(bench.pipe, lat)))
    finally:
        bench.pipe.vae = vae_bf16
        torch.cuda.empty_cache()
    out["preview_bf16_vs_fp32_psnr_db"] = psnr(bf16, fp32)
    out["preview_fp32_decode_s"] = round(t32, 3)
    s = bench.params("standard")
    lat832 = torch.randn(
        1, 48, (s.num_frames - 1) // 4 + 1, s.height // 16, s.width // 16, generator=torch.Generator().manual_seed(0)
    )
    layouts = {}
    for layout in ("contiguous", "channels_last"):
        set_vae_channels_last(bench.pipe.vae, layout == "channels_last")
        res = {}
        for label, z, fps in (("preview", lat, p.fps), ("832x480x81", lat832, s.fps)):
            modes = ["oneshot", "streaming"] + (["tiled", "streaming-1thread"] if layout == "contiguous" else [])
            for mode in modes:
                opts = {"preset": "veryfast", "crf": "20", "threads": "1"} if mode.endswith("1thread") else None
                m = mode.split("-")[0]
                stages.decode_to_mp4(bench.pipe, z, fps, mode=m, tile_on_oom=False, codec_options=opts)  # autotune
                v, t, peak = bench.timed(
                    lambda: stages.decode_to_mp4(bench.pipe, z, fps, mode=m, tile_on_oom=False, codec_options=opts)
                )
                res[f"{label} {mode}"] = {
                    "total_s": round(t, 3),
                    "decode_s": round(v.decode_s, 3),
                    "encode_tail_s": round(v.encode_s, 3),
                    "peak_gib": round(peak, 2),
                    "mp4_bytes": len(v.mp4),
                }
        layouts[layout] = res
        log(f"VAE {layout}: {res}")
    out["decode"] = layouts
    cl = layouts["channels_last"]["preview streaming"]["total_s"]
    co = layouts["contiguous"]["preview streaming"]["total_s"]
    use_cl = cl < co * 0.97
    best = layouts["channels_last" if use_cl else "contiguous"]
    bench.decode_mode = min(("oneshot", "streaming"), key=lambda m: best[f"preview {m}"]["total_s"])
    bench.result["decode_mode"] = bench.decode_mode
    set_vae_channels_last(bench.pipe.vae, use_cl)
    frames_cl = frames_to_uint8(stages.decode_latents(bench.pipe, lat))
    out["channels_last_vs_contiguous_psnr_db"] = psnr(frames_cl, bf16)
    out["channels_last_used"] = use_cl
    bench.result["vae_channels_last"] = use_cl
    o = bench.params("official")
    z = torch.randn(1, 48, (o.num_frames - 1) // 4 + 1, o.height // 16, o.width // 16)
    stages.decode_to_mp4(bench.pipe, z, o.fps)  # the 720p decode's cuDNN autotune, outside timed runs
    frames = frames_to_uint8(stages.decode_latents(bench.pipe, lat832))
    presets = {}
    for name, opts in {
        "veryfast crf20 threads auto (default)": None,
        "veryfast crf20 1 thread (reproducible)": {"preset": "veryfast", "crf": "20", "threads": "1"},
        "superfast crf20 threads auto": {"preset": "superfast", "crf": "20"},
        "ultrafast crf20 threads auto": {"preset": "ultrafast", "crf": "20"},
    }.items():
        started = time.perf_counter()
        data = encode_mp4(frames, s.fps, opts)
        presets[name] = {"s": round(time.perf_counter() - started, 3), "bytes": len(data)}
    out["x264_832x480x81"] = presets
    out["fused_norms"] = fused_norms(bench, lat, lat832, p.fps, s.fps)
    bench.result["vae"] = out
    log(f"VAE: {out}")


def fused_norms(bench: Bench, lat, lat832, fps, fps832) -> dict:
    """Decode+mp4 with the VAE's norms compiled (SiLU folded in) vs as they are; they stay on."""
    from serve_app.pipeline import stages
    from serve_app.pipeline.optimize import fuse_vae_norms
    from serve_app.video import frames_to_uint8

    mode = bench.decode_mode
    before = frames_to_uint8(stages.decode_latents(bench.pipe, lat))
    out = {}
    for label, z, f in (("preview", lat, fps), ("832x480x81", lat832, fps832)):
        _, out[f"{label} unfused_s"], _ = bench.timed(lambda: stages.decode_to_mp4(bench.pipe, z, f, mode=mode))
    out["norms"] = fuse_vae_norms(bench.pipe.vae)
    started = time.perf_counter()
    for label, z, f in (("preview", lat, fps), ("832x480x81", lat832, fps832)):
        stages.decode_to_mp4(bench.pipe, z, f, mode=mode)  # compiles (symbolic shapes: once)
        _, out[f"{label} fused_s"], _ = bench.timed(lambda: stages.decode_to_mp4(bench.pipe, z, f, mode=mode))
    out["compile_s"] = round(time.perf_counter() - started, 1)
    out["fused_vs_unfused_psnr_db"] = psnr(frames_to_uint8(stages.decode_latents(bench.pipe, lat)), before)
    bench.result["vae_fused_norms"] = True
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}
