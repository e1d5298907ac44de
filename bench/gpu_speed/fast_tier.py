"""The fast tier: First-Block-Cache thresholds (and FP8 with --fp8) at preview, PSNR against exact.

The best-quality variant that reaches 2.5x plain (else the fastest) is then
run at official for all 50 steps: a step cache skips steps unevenly, so its
time cannot be extrapolated from a few.
"""

from __future__ import annotations

import time
import traceback

from bench.gpu_speed.harness import Bench, psnr


def fast_tier(bench: Bench) -> None:
    from serve_app.pipeline.optimize import fp8_supported, make_fp8_copy
    from serve_app.settings.speed import FastKnobs

    ok, why = fp8_supported()
    bench.result["fp8_supported"] = why
    ok = ok and bench.args.fp8
    if ok:
        started = time.perf_counter()
        bench.runtime.variants[(True, False)] = make_fp8_copy(bench.pipe.transformer)
        bench.result["fp8_copy_s"] = round(time.perf_counter() - started, 1)
    p = bench.params("preview")
    variants = {f"fbc{t}": FastKnobs(step_cache_threshold=t) for t in bench.args.fbc}
    if ok:
        variants["fp8"] = FastKnobs(fp8=True)
        variants["fp8+fbc0.1"] = FastKnobs(fp8=True, step_cache_threshold=0.1)
        variants["fp8+fbc0.2"] = FastKnobs(fp8=True, step_cache_threshold=0.2)
    plain = bench.plain_row("preview")
    out = {}
    for name, knobs in variants.items():
        try:
            keep = {}
            counter = BlockCounter(bench.runtime.transformer_for(knobs))
            with counter:
                bench.project_call(bench.params("preview", steps=2), knobs=knobs)  # compile for new tensor types
                counter.calls = 0
                times = []
                for _ in range(2):
                    _, t, peak = bench.timed(lambda: bench.project_call(p, knobs=knobs, keep=keep))
                    times.append(t)
                computed = counter.calls / 2
            frames = bench.frames_of(keep["latents"])
            psnr_db = psnr(frames, bench.exact_preview_frames)
            forwards = p.num_inference_steps * (1 if bench.speed.cfg_batch else 2)
            out[name] = {
                "s": round(min(times), 3),
                "psnr_vs_exact_db": psnr_db,
                "full_forwards_share": round(computed / forwards, 2),
            }
            bench.add_row(
                "preview 640x480x17, 20 steps",
                f"project fast ({name})",
                min(times),
                peak,
                psnr_vs_exact_db=psnr_db,
                full_forwards=f"{computed:.0f}/{forwards}",
                ratio=round(plain / min(times), 2),
            )
        except Exception as exc:  # noqa: BLE001 - the variant's error is recorded; the run goes on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
    bench.result["fast_preview"] = out
    best = [k for k, v in out.items() if "s" in v]
    bench.fast_official_knobs = None
    if best:
        # The best-quality variant that reaches 2.5x, else the fastest.
        good = [k for k in best if plain / out[k]["s"] >= 2.5]
        pick = (
            max(good, key=lambda k: out[k]["psnr_vs_exact_db"] or 0) if good else min(best, key=lambda k: out[k]["s"])
        )
        bench.fast_official_knobs = (pick, variants[pick])
        bench.result["fast_pick"] = pick


def fast_official(bench: Bench) -> None:
    name, knobs = bench.fast_official_knobs
    p = bench.params("official")
    counter = BlockCounter(bench.runtime.transformer_for(knobs))
    keep = {}
    with counter:
        _, t, peak = bench.timed(lambda: bench.project_call(p, knobs=knobs, keep=keep))
    forwards = p.num_inference_steps * (1 if bench.speed.cfg_batch else 2)
    bench.add_row(
        "official 1280x704x121, 50 steps",
        f"project fast ({name})",
        t,
        peak,
        note="measured, all 50 steps (a step cache cannot be extrapolated)",
        full_forwards=f"{counter.calls}/{forwards}",
        decode_s=round(keep["decode_s"], 3),
        ratio=round(bench.plain_row("official") / t, 2),
    )


class BlockCounter:
    """Counts forwards that really ran the blocks (a step cache skips them): wraps block 1's forward."""

    def __init__(self, transformer) -> None:
        self.block = transformer.blocks[1]
        self.calls = 0

    def __enter__(self):
        inner = self.block.forward

        def counting(*a, **kw):
            self.calls += 1
            return inner(*a, **kw)

        self._had = "forward" in vars(self.block)
        self._inner = inner
        self.block.forward = counting
        return self

    def __exit__(self, *exc):
        if self._had:
            self.block.forward = self._inner
        else:
            del self.block.forward
