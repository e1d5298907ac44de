"""Plain `WanPipeline.__call__` at each setting: the baseline every ratio is taken against.

Preview three times (median; --preview-runs), 832x480x81 once (not with
--image-to-video), official as a 3-step run with a synchronised clock per step,
extrapolated to 50 steps.
"""

from __future__ import annotations

import statistics

from bench.gpu_speed.harness import OFFICIAL_PROBE_STEPS, Bench


def plain_runs(bench: Bench) -> None:
    from serve_app.video import frames_to_uint8

    warm = bench.params("preview", steps=2)
    bench.timed(lambda: bench.plain_call(warm))
    p = bench.params("preview")
    times, peak = [], 0.0
    for _ in range(bench.preview_runs()):
        frames, t, peak = bench.timed(lambda: bench.plain_call(p))
        times.append(t)
    bench.plain_preview_frames = frames_to_uint8(frames)
    bench.add_row(
        "preview 640x480x17, 20 steps", "plain", statistics.median(times), peak, runs=[round(x, 3) for x in times]
    )
    if "standard" in bench.measured_presets():
        p = bench.params("standard", steps=20)
        _, t, peak = bench.timed(lambda: bench.plain_call(p))
        bench.add_row("832x480x81, 20 steps", "plain", t, peak)
    p = bench.params("official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: bench.plain_call(q, on_step), p)
    bench.plain_official_step = step
    est = total + (50 - OFFICIAL_PROBE_STEPS) * step
    bench.add_row(
        "official 1280x704x121, 50 steps",
        "plain",
        est,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        probe_total_s=round(total, 3),
        step_s=round(step, 4),
    )
