"""Where the preview's time goes, and which exact-path variants shorten it (GPU, 5B random).

    python bench/probe_preview.py --budget-s 560

One process, the bench's weights, prompt and seed. Plain `WanPipeline.__call__`
at preview (640x480x17, 20 steps, guidance 5) is the baseline; then the
project's pieces are timed one by one (prompt encoding, the 20-step loop,
decode + mp4) under these variants, all exact (no quality-changing knob):
  dyn        regional compile with symbolic shapes (the shipped setting)
  static     regional compile, static shapes
  autotune   static shapes, mode max-autotune-no-cudagraphs (GEMM autotuning)
each with guidance as one batch-2 forward and as two batch-1 forwards; and the
VAE decode with and without fused norms (PSNR between them). Writes
bench/results/probe-preview-<card>.json and prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, write_result
from bench.gpu_speed.harness import Bench, log, psnr
from serve_app.deadline import Deadline, StepGuard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--budget-s", type=float, default=560)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    args.attention, args.skip, args.fbc, args.fp8 = "auto", [], [], False
    b = Bench(args)
    torch = b.torch
    from serve_app.pipeline import stages
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.pipeline.loading import set_attention_backend
    from serve_app.pipeline.optimize import compile_blocks, fuse_vae_norms, prepare_vae, uncompile_blocks
    from serve_app.settings.speed import SpeedOptions

    out: dict = {"command": "python bench/probe_preview.py " + " ".join(sys.argv[1:]), "card": b.card, "rows": []}

    def save():
        write_result(f"probe-preview-{slug(card_name())}", out)

    def row(what, seconds, **extra):
        out["rows"].append({"what": what, "s": round(seconds, 4), **extra})
        log(f"ROW {what}: {seconds:.4f}s {extra}")
        save()

    def median_time(fn, n=3):
        times = []
        for _ in range(n):
            _, t, _ = b.timed(fn)
            times.append(t)
        return statistics.median(times)

    b.build()
    set_attention_backend(b.pipe.transformer, "sdpa-cudnn" if b.cuda else "sdpa")
    p = b.params("preview")
    b.timed(lambda: b.plain_call(b.params("preview", steps=2)))
    plain = median_time(lambda: b.plain_call(p), 2)
    row("plain WanPipeline.__call__ (frames, no mp4)", plain)

    emb = stages.encode_prompts(b.pipe, p.prompt, p.negative_prompt, p.guidance_scale, b.profile.max_sequence_length)
    row(
        "encode prompt + negative (UMT5-XXL)",
        median_time(
            lambda: stages.encode_prompts(
                b.pipe, p.prompt, p.negative_prompt, p.guidance_scale, b.profile.max_sequence_length
            )
        ),
    )
    row(
        "encode prompt only",
        median_time(lambda: stages.encode_prompts(b.pipe, p.prompt, "", 1.0, b.profile.max_sequence_length)),
    )

    speed = SpeedOptions(
        compile="default", compile_dynamic=True, cfg_batch=True, cudnn_benchmark=b.cuda, vae_channels_last=True
    )
    runtime = DenoiserRuntime(b.pipe, speed)

    def loop(cfg_batch: bool):
        runtime.speed = speed.model_copy(update={"cfg_batch": cfg_batch})
        return denoise_optimized(runtime, p, emb, StepGuard(Deadline.after(3600), p.num_inference_steps))

    def loops(variant: str):
        for cfg in (True, False):
            started = time.perf_counter()
            loop(cfg)  # compiles this batch size's graph, first cuBLAS calls
            warm = time.perf_counter() - started
            t = median_time(lambda: loop(cfg))
            row(
                f"loop 20 steps [{variant}] cfg_batch={cfg}",
                t,
                first_run_s=round(warm, 1),
                ratio_vs_plain=round(plain / t, 3),
            )

    loops("dyn")
    latents = loop(False)

    prepare_vae(b.pipe.vae, speed)
    b.timed(lambda: stages.decode_to_mp4(b.pipe, latents, p.fps))
    row("decode+mp4 streaming, channels-last", median_time(lambda: stages.decode_to_mp4(b.pipe, latents, p.fps)))
    frames_before = b.frames_of(latents)
    n = fuse_vae_norms(b.pipe.vae)
    started = time.perf_counter()
    b.timed(lambda: stages.decode_to_mp4(b.pipe, latents, p.fps))
    row(
        "decode+mp4 streaming, channels-last, fused norms",
        median_time(lambda: stages.decode_to_mp4(b.pipe, latents, p.fps)),
        norms=n,
        first_run_s=round(time.perf_counter() - started, 1),
        psnr_vs_unfused_db=psnr(b.frames_of(latents), frames_before),
    )
    std = b.params("standard", steps=1)
    std_latents = torch.randn(1, 48, (std.num_frames - 1) // 4 + 1, std.height // 16, std.width // 16)
    b.timed(lambda: stages.decode_to_mp4(b.pipe, std_latents, p.fps))
    row("decode+mp4 832x480x81, fused norms", median_time(lambda: stages.decode_to_mp4(b.pipe, std_latents, p.fps), 2))

    def project_call():
        e = stages.encode_prompts(b.pipe, p.prompt, p.negative_prompt, p.guidance_scale, b.profile.max_sequence_length)
        lat = denoise_optimized(runtime, p, e, StepGuard(Deadline.after(3600), p.num_inference_steps))
        return stages.decode_to_mp4(b.pipe, lat, p.fps)

    for cfg in (True, False):
        runtime.speed = speed.model_copy(update={"cfg_batch": cfg})
        t = median_time(project_call)
        row(f"project call [dyn, fused norms] cfg_batch={cfg}", t, ratio_vs_plain=round(plain / t, 3))

    for variant, mode in (("static", "default"), ("autotune", "max-autotune-no-cudagraphs")):
        if b.left() < 120:
            out.setdefault("skipped", []).append(variant)
            continue
        torch._dynamo.reset()
        uncompile_blocks(b.pipe.transformer)
        compile_blocks(b.pipe.transformer, mode, dynamic=False)
        loops(variant)
        for cfg in (True, False):
            runtime.speed = speed.model_copy(update={"cfg_batch": cfg})
            t = median_time(project_call)
            row(f"project call [{variant}, fused norms] cfg_batch={cfg}", t, ratio_vs_plain=round(plain / t, 3))

    out["elapsed_s"] = round(b.elapsed(), 1)
    save()
    print(f"\n{b.card}, {args.profile}, preview 640x480x17, 20 steps")
    print("| what | s | ratio vs plain |")
    print("| --- | --- | --- |")
    for r in out["rows"]:
        print(f"| {r['what']} | {r['s']:.3f} | {r.get('ratio_vs_plain', '')} |")


if __name__ == "__main__":
    main()
