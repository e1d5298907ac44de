"""FP8 against bf16 at the official size, forward only, batch 2 (guidance as one batch).

The fast tier (fast_tier.py) tries compiled FP8 only with --fp8; this section
always asks the cheaper question first, eagerly.
"""

from __future__ import annotations

import time

from bench.gpu_speed.harness import Bench, log


def fp8_720p(bench: Bench) -> None:
    """FP8 DiT forward at 720p, eager (its compile took 3.6 min in the first run): is there a gain to have?"""
    torch = bench.torch
    from serve_app.pipeline.optimize import make_fp8_copy, uncompile_blocks

    fp8 = make_fp8_copy(bench.pipe.transformer)
    uncompile_blocks(fp8)
    out = {}
    h, w, f = bench.shape("official")
    lat = torch.randn(2, 48, (f - 1) // 4 + 1, h // 16, w // 16, device=bench.device, dtype=torch.bfloat16)
    ts = torch.full((2,), 500, device=bench.device, dtype=torch.long)
    enc = torch.randn(2, 512, 4096, device=bench.device, dtype=torch.bfloat16)
    with torch.inference_mode():
        for label, tr in (("fp8 eager", fp8), ("bf16 compiled", bench.pipe.transformer)):
            tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
            bench.sync()
            started = time.perf_counter()
            for _ in range(2):
                tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
            bench.sync()
            out[label] = round((time.perf_counter() - started) / 2 * 1000, 1)
    del fp8
    torch.cuda.empty_cache()
    bench.result["fp8_720p_b2_ms"] = out
    log(f"FP8 720p: {out}")
