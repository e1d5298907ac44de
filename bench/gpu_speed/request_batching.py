"""Cross-request batching: 1, 2, 4 and 8 requests through one `StepBatcher`, throughput against one."""

from __future__ import annotations

from bench.gpu_speed.harness import SEED, Bench, log
from serve_app.deadline import Deadline, StepGuard


def batching(bench: Bench) -> None:
    from serve_app.pipeline import stages
    from serve_app.pipeline.step_batcher import StepBatcher
    from serve_app.settings.speed import FastKnobs

    out = {}
    for label, shape in {"640x480x17": "preview", "640x480x9": "preview9"}.items():
        base = bench.params("preview", steps=8)
        base = base.model_copy(update={"num_frames": bench.shape(shape)[2]})
        emb = stages.encode_prompts(
            bench.pipe, base.prompt, base.negative_prompt, base.guidance_scale, bench.profile.max_sequence_length
        )
        res = {}
        for n in (1, 2, 4, 8):
            batcher = StepBatcher(bench.runtime, max_requests=8, max_tokens=10**9)

            def run():
                futures = [
                    batcher.submit(
                        base.model_copy(update={"seed": SEED + i}),
                        emb,
                        StepGuard(Deadline.after(3600), base.num_inference_steps),
                        None,
                        FastKnobs(),
                        lambda loop: None,
                    )
                    for i in range(n)
                ]
                batcher.run()
                return [f.result() for f in futures]

            run()  # first call at this batch size: cuBLAS heuristics, allocator
            _, t, peak = bench.timed(run)
            res[n] = {"s": round(t, 3), "videos_per_min": round(60 * n / t, 1), "peak_gib": round(peak, 2)}
        for n in (2, 4, 8):
            res[n]["throughput_vs_1"] = round(res[n]["videos_per_min"] / res[1]["videos_per_min"], 3)
        out[f"{label}, 8 steps, guidance"] = res
    bench.result["batching"] = out
    log(f"batching: {out}")
