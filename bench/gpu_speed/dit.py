"""The DiT forward's achieved FLOP rate, as a share of the card's bf16 matmul rate.

`dit_flops` is what that rate is counted in. It lives here, not beside the
model code: nothing that serves requests counts FLOPs.
"""

from __future__ import annotations

import time

from bench.gpu_speed.harness import Bench, log
from bench.gpu_speed.matmul import matmul_rate


def dit_flops(config, batch: int, tokens: int, text_len: int) -> float:
    """FLOPs of one WanTransformer3DModel forward (multiply-add = 2), from its config.

    Per block: self-attention projections 4*D^2 per token, cross-attention
    q/out 2*D^2 per token plus k/v 2*D^2 per text token, FFN 2*D*F per token,
    attention scores and values 2*N^2*D (self) and 2*N*T*D (cross); all x2 for
    FLOPs. Embedders and the output projection are added; norms are ignored.
    """
    d = config.num_attention_heads * config.attention_head_dim
    f = config.ffn_dim
    n, t = tokens, text_len
    per_block = 2 * (4 * d * d * n + 2 * d * d * n + 2 * d * d * t + 2 * d * f * n + 2 * n * n * d + 2 * n * t * d)
    patch = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
    embed = 2 * n * d * patch * config.in_channels * 2  # patch embedding + output projection
    text = 2 * t * (config.text_dim * d + d * d)
    return float(batch * (config.num_layers * per_block + embed + text))


def dit_efficiency(bench: Bench) -> None:
    torch = bench.torch
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
            out[f"{name} batch {batch}"] = {
                "ms": round(t * 1000, 1),
                "tokens": tokens,
                "tflop": round(flops / 1e12, 1),
                "tflops": round(flops / t / 1e12, 1),
                "share_of_matmul": round(flops / t / 1e12 / rate, 3),
            }
    bench.result["dit_forward_compiled"] = out
    log(f"DiT forward: {out}")
