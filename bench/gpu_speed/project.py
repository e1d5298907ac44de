"""The project's path (prompt encoding, the optimised loop, decode + mp4) at each setting, exact.

Settings and probes as in plain.py; the preview frames are kept to compare the
fast tier against.
"""

from __future__ import annotations

import statistics

from bench.gpu_speed.harness import OFFICIAL_PROBE_STEPS, Bench, psnr


def project_runs(bench: Bench) -> None:
    p = bench.params("preview")
    times, peak, keep, splits = [], 0.0, {}, []
    for _ in range(bench.preview_runs()):
        _, t, peak = bench.timed(lambda: bench.project_call(p, keep=keep))
        times.append(t)
        splits.append(_split(keep))
    bench.exact_preview_latents = keep["latents"]
    frames = bench.frames_of(keep["latents"])
    bench.exact_preview_frames = frames
    psnr_db = psnr(frames, bench.plain_preview_frames)
    bench.result["exact_vs_plain_preview_psnr_db"] = psnr_db
    plain = bench.plain_row("preview")
    bench.add_row(
        "preview 640x480x17, 20 steps",
        "project exact",
        statistics.median(times),
        peak,
        runs=[round(x, 3) for x in times],
        psnr_vs_plain_db=psnr_db,
        ratio=round(plain / statistics.median(times), 2),
        # Each part's median over the runs, as the image rows carry them (image_to_video.py).
        **{k: round(statistics.median(s[k] for s in splits), 3) for k in splits[0]},
    )
    if "standard" in bench.measured_presets():
        p = bench.params("standard", steps=20)
        _, t, peak = bench.timed(lambda: bench.project_call(p, keep=keep))
        bench.add_row(
            "832x480x81, 20 steps",
            "project exact",
            t,
            peak,
            decode_s=round(keep["decode_s"], 3),
            ratio=round(bench.plain_row("832x480x81") / t, 2),
        )
    p = bench.params("official", steps=OFFICIAL_PROBE_STEPS)
    total, step, peak = bench.stepped(lambda q, on_step: bench.project_call(q, on_step=on_step, keep=keep), p)
    est = total + (50 - OFFICIAL_PROBE_STEPS) * step
    bench.exact_official_step = step
    bench.add_row(
        "official 1280x704x121, 50 steps",
        "project exact",
        est,
        peak,
        note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
        probe_total_s=round(total, 3),
        step_s=round(step, 4),
        ratio=round(bench.plain_row("official") / est, 2),
        **_split(keep),
    )


def _split(keep: dict) -> dict:
    """A run's prompt encode, loop and decode (what project_call leaves in `keep`)."""
    return {k: round(keep[k], 3) for k in ("prompt_encode_s", "denoise_s", "decode_s")}
