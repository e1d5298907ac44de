"""Whole-forward CUDA graphs against direct calls at preview sizes, batch 2."""

from __future__ import annotations

import statistics
import time

from bench.gpu_speed.harness import Bench, log


def cuda_graphs(bench: Bench) -> None:
    torch = bench.torch
    from serve_app.pipeline.optimize import GraphedForward

    tr = bench.pipe.transformer
    out = {}
    if not bench.cuda:
        raise RuntimeError("CUDA graphs need CUDA")
    for name, (h, w, f, batch) in {"preview b2": (480, 640, 17, 2), "640x480x9 b2": (480, 640, 9, 2)}.items():
        lat = torch.randn(batch, 48, (f - 1) // 4 + 1, h // 16, w // 16, device="cuda", dtype=torch.bfloat16)
        ts = torch.full((batch,), 500, device="cuda", dtype=torch.long)
        enc = torch.randn(batch, 512, 4096, device="cuda", dtype=torch.bfloat16)
        graphs = GraphedForward(tr, 10**9)
        with torch.inference_mode():
            ref = tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0]
            got = graphs(lat, ts, enc)
            diff = (got.float() - ref.float()).abs().max().item()
            res = {}
            for label, fn in (
                ("direct", lambda: tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)[0]),
                ("graph", lambda: graphs(lat, ts, enc)),  # noqa: F821 - `del graphs` comes after the loop
            ):
                # Synchronised per call, like a step that ends in a host sync.
                times = []
                for _ in range(10):
                    bench.sync()
                    started = time.perf_counter()
                    fn()
                    bench.sync()
                    times.append(time.perf_counter() - started)
                res[label] = round(statistics.median(times) * 1000, 2)
        res["max_abs_diff"] = diff
        out[name] = res
        del graphs
    torch.cuda.empty_cache()
    bench.result["cuda_graphs"] = out
    log(f"CUDA graphs: {out}")
