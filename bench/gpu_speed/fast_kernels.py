"""The fast path's kernels: FP8 self-attention (and with --fp8, FP8 linears too) through the
project's loop at every setting, against plain diffusers and the exact path in this run.

Rows `project fast (<kernels>)`: preview and 832x480x81 measured whole, with the video's
PSNR against the exact path's on the same seed; official extrapolated from a 3-step probe
as the exact row is (the kernels change every step alike, unlike a step cache). Per-layer
accuracy of the attention itself is bench/bench_attention.py's.
"""

from __future__ import annotations

import statistics
import time

from bench.gpu_speed.harness import OFFICIAL_PROBE_STEPS, Bench, log, psnr


def _variants(bench: Bench) -> dict:
    """name -> FastKnobs, each variant built on bench.runtime (sharing the DiT's weights)."""
    from serve_app.pipeline.fp8_attention import fp8_sdpa, reference_fp8_sdpa, sharing_weights, use_fp8_self_attention
    from serve_app.pipeline.optimize import compile_blocks, make_fp8_copy, uncompile_blocks
    from serve_app.settings.speed import FastKnobs

    runtime, speed = bench.runtime, bench.speed
    min_tokens = speed.fp8_attention_min_tokens
    # --smoke on a CPU: the same arithmetic in plain torch (cuDNN's kernel needs a Hopper card).
    attention = None if bench.cuda else (lambda q, k, v: fp8_sdpa(q, k, v, kernel=reference_fp8_sdpa))
    variant = sharing_weights(runtime.transformer)
    uncompile_blocks(variant)  # the copy carries the compiled forwards: compile it as its own
    use_fp8_self_attention(variant, attention, min_tokens)
    compile_blocks(variant, speed.compile, speed.compile_dynamic)
    runtime.variants[(False, True)] = variant
    out = {"cuDNN FP8 attention": FastKnobs(fp8_attention=True)}
    if bench.args.fp8:
        both = make_fp8_copy(runtime.transformer)
        uncompile_blocks(both)
        use_fp8_self_attention(both, attention, min_tokens)
        compile_blocks(both, speed.compile, speed.compile_dynamic)
        runtime.variants[(True, True)] = both
        out["cuDNN FP8 attention + FP8 linears"] = FastKnobs(fp8=True, fp8_attention=True)
    return out


def _exact(bench: Bench, prefix: str) -> float:
    return next(r["time_s"] for r in bench.rows if r["path"] == "project exact" and r["setting"].startswith(prefix))


def fast_kernels(bench: Bench) -> None:
    variants = _variants(bench)
    bench.result["fast_kernels_min_tokens"] = bench.speed.fp8_attention_min_tokens
    shapes = [(p.height, p.width, p.num_frames) for p in (bench.params(n) for n in ("preview", "standard", "official"))]
    started = time.perf_counter()
    bench.runtime.warm_up(
        shapes, bench.profile.max_sequence_length, steps=2, guidance=(5.0,), knob_sets=list(variants.values())
    )
    bench.result["fast_kernels_warmup_s"] = round(time.perf_counter() - started, 1)
    # The exact path's 832x480x81 frames, for PSNR (project_runs keeps only preview's).
    keep: dict = {}
    standard = bench.params("standard", steps=20)
    bench.project_call(standard, keep=keep)
    exact_standard = bench.frames_of(keep["latents"])
    for name, knobs in variants.items():
        label = f"project fast ({name})"
        p = bench.params("preview")
        times, peak = [], 0.0
        for _ in range(3):
            _, t, peak = bench.timed(lambda p=p, knobs=knobs: bench.project_call(p, knobs=knobs, keep=keep))
            times.append(t)
        t = statistics.median(times)
        bench.add_row(
            "preview 640x480x17, 20 steps",
            label,
            t,
            peak,
            note=f"{bench.params('preview').latent_tokens} tokens < fp8_attention_min_tokens: attention in bf16",
            psnr_vs_exact_db=psnr(bench.frames_of(keep["latents"]), bench.exact_preview_frames),
            ratio=round(bench.plain_row("preview") / t, 2),
            vs_exact=round(_exact(bench, "preview") / t, 2),
        )
        _, t, peak = bench.timed(lambda knobs=knobs: bench.project_call(standard, knobs=knobs, keep=keep))
        bench.add_row(
            "832x480x81, 20 steps",
            label,
            t,
            peak,
            psnr_vs_exact_db=psnr(bench.frames_of(keep["latents"]), exact_standard),
            decode_s=round(keep["decode_s"], 3),
            ratio=round(bench.plain_row("832x480x81") / t, 2),
            vs_exact=round(_exact(bench, "832x480x81") / t, 2),
        )
        p = bench.params("official", steps=OFFICIAL_PROBE_STEPS)
        total, step, peak = bench.stepped(
            lambda q, on_step, knobs=knobs: bench.project_call(q, knobs=knobs, on_step=on_step, keep=keep), p
        )
        est = total + (50 - OFFICIAL_PROBE_STEPS) * step
        bench.add_row(
            "official 1280x704x121, 50 steps",
            label,
            est,
            peak,
            note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
            step_s=round(step, 4),
            exact_step_s=round(bench.exact_official_step, 4),
            decode_s=round(keep["decode_s"], 3),
            ratio=round(bench.plain_row("official") / est, 2),
            vs_exact=round(_exact(bench, "official") / est, 2),
        )
        log(f"fast kernels {name}: official step {step:.3f}s vs exact {bench.exact_official_step:.3f}s")
