"""The DiT forward's achieved FLOP rate, as a share of the card's bf16 matmul rate."""

from __future__ import annotations

import time

from bench.gpu_speed.harness import Bench, log
from bench.gpu_speed.matmul import matmul_rate


def dit_efficiency(bench: Bench) -> None:
    torch = bench.torch
    from serve_app.pipeline.optimize import dit_flops

    tr = bench.pipe.transformer
    rate = bench.result.get("bf16_matmul_tflops") or matmul_rate(bench)
    out = {}
    dtype, text_dim = tr.dtype, tr.config.text_dim
    for name, (h, w, f) in {"720p": bench.shape("official"), "preview": bench.shape("preview")}.items():
        for batch in (1, 2):
            lat = torch.randn(batch, 48, (f - 1) // 4 + 1, h // 16, w // 16, device=bench.device, dtype=dtype)
            ts = torch.full((batch,), 500, device=bench.device, dtype=torch.long)
            enc = torch.randn(batch, 512, text_dim, device=bench.device, dtype=dtype)
            tokens = lat.shape[2] * (h // 32) * (w // 32)
            with torch.inference_mode():
                for _ in range(2):
                    tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                bench.sync()
                n = 3 if name == "720p" else 10
                started = time.perf_counter()
                for _ in range(n):
                    tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                bench.sync()
            t = (time.perf_counter() - started) / n
            flops = dit_flops(tr.config, batch, tokens, 512)
            out[f"{name} batch {batch}"] = {"ms": round(t * 1000, 1), "tokens": tokens,
                                             "tflop": round(flops / 1e12, 1),
                                             "tflops": round(flops / t / 1e12, 1),
                                             "share_of_matmul": round(flops / t / 1e12 / rate, 3)}
    bench.result["dit_forward_compiled"] = out
    log(f"DiT forward: {out}")
