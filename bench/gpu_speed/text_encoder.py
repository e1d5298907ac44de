"""UMT5-XXL eager vs regionally compiled, one text; the faster stays on for the project path."""

from __future__ import annotations

import statistics
import time

from bench.gpu_speed.harness import Bench, log


def text_encoder(bench: Bench) -> None:
    """One text through UMT5-XXL, eager vs regionally compiled; the faster stays on."""
    from serve_app.pipeline import stages
    from serve_app.pipeline.optimize import compile_text_encoder, uncompile_blocks

    p = bench.params("preview")
    n = bench.profile.max_sequence_length

    def median(fn, runs=5):
        return statistics.median(bench.timed(fn)[1] for _ in range(runs))

    out = {"eager_s": median(lambda: stages.encode_text(bench.pipe, p.prompt, n))}
    eager = stages.encode_text(bench.pipe, p.prompt, n).float()
    compile_text_encoder(bench.pipe.text_encoder)
    started = time.perf_counter()
    compiled = stages.encode_text(bench.pipe, p.prompt, n).float()
    out["compile_s"] = round(time.perf_counter() - started, 1)
    out["compiled_s"] = median(lambda: stages.encode_text(bench.pipe, p.prompt, n))
    out["max_abs_diff"] = float((compiled - eager).abs().max())
    out["kept"] = "compiled" if out["compiled_s"] < out["eager_s"] * 0.97 else "eager"
    if out["kept"] == "eager":
        uncompile_blocks(bench.pipe.text_encoder)
    bench.result["text_encoder"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    log(f"text encoder: {bench.result['text_encoder']}")
