"""The card's bf16 matmul rate (8192^3): the yardstick the DiT's achieved FLOP rate is read against."""

from __future__ import annotations

import statistics
import time

from bench.gpu_speed.harness import Bench, log


def matmul_rate(bench: Bench) -> float:
    torch = bench.torch
    n = 8192 if bench.cuda else 512
    a = torch.randn(n, n, device=bench.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=bench.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    bench.sync()
    times = []
    for _ in range(10):
        started = time.perf_counter()
        a @ b
        bench.sync()
        times.append(time.perf_counter() - started)
    rate = 2 * n**3 / statistics.median(times) / 1e12
    bench.result["bf16_matmul_tflops"] = round(rate, 1)
    log(f"bf16 matmul 8192^3: {rate:.0f} TFLOP/s")
    return rate
