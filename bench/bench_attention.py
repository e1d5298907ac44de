"""Low-precision attention and linears for the DiT: which kernels, how fast, how accurate.

    python bench/bench_attention.py                      # on an H100 / H200, ~6 min

One process, the 5B DiT with random weights (`wan2.2-ti2v-5b-random`, bf16):
  kernels   attention alone at the DiT's shapes (batch 2 = guidance, 24 heads x 128) at
            720p (27,280 tokens), 832x480x81 (8,190) and preview (1,500): cuDNN bf16 SDPA
            (the exact path's kernel, the baseline), flash bf16, and cuDNN's FP8 SDPA with
            and without the quantize/dequantize around it (serve_app/pipeline/fp8_attention.py).
            The FP8 kernel is also checked against reference_fp8_sdpa (same arithmetic in fp32).
  accuracy  one DiT forward at 832x480x81 and at 720p with every block's self-attention
            computed both ways on the same activations: cosine similarity and relative L2
            of each layer's attention output, and of the DiT's noise prediction.
  linears   the noise prediction with FP8 linears (torchao), alone and with FP8 attention.
  step      one guided (batch-2) DiT forward at 720p, compiled as the service compiles it:
            exact bf16, FP8 attention, FP8 linears (torchao), both; and plain diffusers'
            eager forward; ratios against exact and plain.
Candidates that are not run say why in "not_run". Results: bench/results/attention-<card>.json
(and $OUT/ when set), table last.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, write_result

SHAPES = {"720p": (704, 1280, 121), "832x480x81": (480, 832, 81), "preview": (480, 640, 17)}
NOT_RUN = {
    "sageattention": "measured before (issue 19): SageAttention 1.0.6 is 0.76x cuDNN bf16 at 27,280 tokens, "
    "0.63x at 8,190, 0.42x at 1,500 on an H100",
    "flashinfer": "flashinfer-python 0.7.2 is a 62 MB wheel that JIT-compiles its kernels and pulls "
    "nvidia-cutlass-dsl (~92 MB): over the 64 MiB a device call can carry",
    "flash-attn-4": "its nvidia-cutlass-dsl-libs-cu13 wheel is ~92 MB (over the 64 MiB carry), and FA4's "
    "kernels target Blackwell (sm_100); FP8 attention on Hopper is FA3's, which has no wheel on PyPI",
    "transformer-engine": "its torch extension is source-only on PyPI; cuDNN's FP8 SDPA (what TE calls) is "
    "measured directly",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tokens(shape) -> int:
    h, w, f = shape
    return ((f - 1) // 4 + 1) * (h // 32) * (w // 32)


def timed(torch, fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat


def compare(torch, exact, approx) -> dict:
    a, b = exact.float().flatten(), approx.float().flatten()
    return {
        "cos": round(torch.nn.functional.cosine_similarity(a, b, dim=0).item(), 6),
        "rel_l2": round(((a - b).norm() / a.norm()).item(), 6),
    }


def kernels(torch, result: dict) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from serve_app.pipeline.fp8_attention import fp8_sdpa, quantize_e4m3, reference_fp8_sdpa, register_cudnn_op

    register_cudnn_op()
    op = torch.ops.wan_serve.cudnn_fp8_sdpa
    rows = {}
    for name, shape in SHAPES.items():
        n = tokens(shape)
        q, k, v = (torch.randn(2, n, 24, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * 2 * 24 * n * n * 128
        repeat = 5 if n > 10000 else 20
        row = {"tokens": n}

        # bf16 gets contiguous (B, H, S, D) tensors, its fastest layout
        qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))

        def bf16(backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)

        for label, backend in (("bf16 cudnn", SDPBackend.CUDNN_ATTENTION), ("bf16 flash", SDPBackend.FLASH_ATTENTION)):
            t = timed(torch, lambda backend=backend: bf16(backend), repeat)
            row[label] = {"ms": round(t * 1000, 2), "tflops": round(flops / t / 1e12, 1)}
        t = timed(torch, lambda: fp8_sdpa(q, k, v), repeat)
        row["fp8 cudnn (with quantize)"] = {"ms": round(t * 1000, 2), "tflops": round(flops / t / 1e12, 1)}
        (q8, dq), (k8, dk), (v8, dv) = quantize_e4m3(q), quantize_e4m3(k), quantize_e4m3(v)
        scale = 1 / math.sqrt(128)
        t = timed(torch, lambda: op(q8, k8, v8, dq, dk, dv, 1 / dv, scale), repeat)
        row["fp8 cudnn (kernel only)"] = {"ms": round(t * 1000, 2), "tflops": round(flops / t / 1e12, 1)}
        exact = bf16(SDPBackend.CUDNN_ATTENTION).transpose(1, 2)
        row["fp8 vs bf16 (random q,k,v)"] = compare(torch, exact, fp8_sdpa(q, k, v))
        if n <= 2000:  # the fp32 reference holds B*H*S*S scores
            kernel_out = op(q8, k8, v8, dq, dk, dv, 1 / dv, scale).float() * dv.flatten()
            ref = reference_fp8_sdpa(q8, k8, v8, dq, dk, dv, 1 / dv, scale).float() * dv.flatten()
            row["cudnn fp8 vs reference_fp8_sdpa"] = compare(torch, ref, kernel_out)
        row["fp8 speedup vs bf16 cudnn"] = round(row["bf16 cudnn"]["ms"] / row["fp8 cudnn (with quantize)"]["ms"], 3)
        rows[name] = row
        log(f"kernels {name}: {row}")
        torch.cuda.empty_cache()
    result["kernels"] = rows
    from serve_app.pipeline.fp8_attention import cudnn_plan_times

    result["cudnn_fp8_plans_ms"] = cudnn_plan_times()
    log(f"cuDNN FP8 plans: {result['cudnn_fp8_plans_ms']}")


class Recorder:
    """An attention callable for Fp8SelfAttnProcessor: computes exact and FP8 on the same
    q, k, v, records how far apart they are, and returns the exact one (so the activations
    every later layer sees are the exact path's)."""

    def __init__(self, torch) -> None:
        self.torch = torch
        self.layers: list[dict] = []

    def __call__(self, q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from serve_app.pipeline.fp8_attention import bf16_sdpa, fp8_sdpa

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            exact = bf16_sdpa(q, k, v)
        self.layers.append(compare(self.torch, exact, fp8_sdpa(q, k, v)))
        return exact


def dit_inputs(torch, transformer, shape, batch=2):
    h, w, f = shape
    lat = torch.randn(batch, 48, (f - 1) // 4 + 1, h // 16, w // 16, device="cuda", dtype=torch.bfloat16)
    ts = torch.full((batch,), 500, device="cuda", dtype=torch.long)
    enc = torch.randn(batch, 512, transformer.config.text_dim, device="cuda", dtype=torch.bfloat16) * 0.1
    return {"hidden_states": lat, "timestep": ts, "encoder_hidden_states": enc, "return_dict": False}


def accuracy(torch, transformer, result: dict) -> None:
    from serve_app.pipeline.fp8_attention import sharing_weights, use_fp8_self_attention

    rows = {}
    for name in ("832x480x81", "720p"):
        torch.manual_seed(0)
        inputs = dit_inputs(torch, transformer, SHAPES[name])
        recorder = Recorder(torch)
        probe = sharing_weights(transformer)
        use_fp8_self_attention(probe, recorder)
        fp8 = sharing_weights(transformer)
        use_fp8_self_attention(fp8)
        with torch.inference_mode():
            exact_out = transformer(**inputs)[0]
            probe(**inputs)
            fp8_out = fp8(**inputs)[0]
        cos = [layer["cos"] for layer in recorder.layers]
        rows[name] = {
            "layers": recorder.layers,
            "min_layer_cos": min(cos),
            "max_layer_rel_l2": max(layer["rel_l2"] for layer in recorder.layers),
            "noise_prediction": compare(torch, exact_out, fp8_out),
        }
        log(f"accuracy {name}: min layer cos {min(cos)}, noise prediction {rows[name]['noise_prediction']}")
        del probe, fp8, exact_out, fp8_out, inputs
        torch.cuda.empty_cache()
    result["accuracy"] = rows


def linears_accuracy(torch, transformer, result: dict) -> None:
    """FP8 linears (torchao, per-row scales), alone and with FP8 attention: the DiT's noise
    prediction against exact, eager, on the same inputs as `accuracy`."""
    from serve_app.pipeline.fp8_attention import sharing_weights, use_fp8_self_attention
    from serve_app.pipeline.optimize import fp8_supported, make_fp8_copy

    ok, why = fp8_supported()
    if not ok:
        result["linears_accuracy"] = {"error": why}
        return
    fp8 = make_fp8_copy(transformer)
    both = sharing_weights(fp8)
    use_fp8_self_attention(both)
    rows = {}
    for name in ("832x480x81", "720p"):
        torch.manual_seed(0)
        inputs = dit_inputs(torch, transformer, SHAPES[name])
        with torch.inference_mode():
            exact = transformer(**inputs)[0]
            rows[name] = {
                "fp8 linears": compare(torch, exact, fp8(**inputs)[0]),
                "fp8 linears + fp8 attention": compare(torch, exact, both(**inputs)[0]),
            }
        log(f"linears accuracy {name}: {rows[name]}")
        result["linears_accuracy"] = rows


def step_times(torch, transformer, result: dict, args, deadline: float) -> None:
    from serve_app.pipeline.fp8_attention import sharing_weights, use_fp8_self_attention
    from serve_app.pipeline.optimize import compile_blocks, fp8_supported, make_fp8_copy, uncompile_blocks

    inputs = dit_inputs(torch, transformer, SHAPES["720p"])
    rows = result.setdefault("step_720p", {})

    def forward_s(module, repeat=3):
        with torch.inference_mode():
            return timed(torch, lambda: module(**inputs), repeat)

    def measure(label, make):
        if time.perf_counter() > deadline:
            rows[label] = {"skipped": "out of budget"}
            return
        try:
            started = time.perf_counter()
            module = make()
            with torch.inference_mode():
                module(**inputs)  # compile
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - started
            rows[label] = {"s": round(forward_s(module), 4), "compile_s": round(compile_s, 1)}
            log(f"step 720p {label}: {rows[label]}")
            del module
        except Exception as exc:  # noqa: BLE001 - one variant's failure is recorded; the rest still run
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
        torch.cuda.empty_cache()
        write(result, args)

    # plain diffusers: eager, the profile's attention backend as diffusers dispatches it
    rows["plain eager"] = {"s": round(forward_s(transformer, 2), 4)}
    log(f"step 720p plain eager: {rows['plain eager']}")

    def compiled(module):
        compile_blocks(module, "default", dynamic=False)
        return module

    def exact():
        return compiled(sharing_weights(transformer))

    def fp8_attention():
        module = sharing_weights(transformer)
        use_fp8_self_attention(module)
        return compiled(module)

    if "exact" in args.variants:
        measure("exact compiled", exact)
    if "fp8-attention" in args.variants:
        measure("fp8 attention compiled", fp8_attention)
    ok, why = fp8_supported()
    if not ok:
        rows["fp8 linears"] = {"error": why}
        return

    def fp8_linears(granularity: str, with_attention: bool):
        def make():
            module = make_fp8_copy(transformer, granularity)
            uncompile_blocks(module)
            if with_attention:
                use_fp8_self_attention(module)
            compiled(module)
            made.append(module)
            return module

        return make

    made: list = []
    for granularity in args.linears:
        if f"{granularity}+attention" in args.variants:
            measure(f"fp8 linears per-{granularity} + fp8 attention compiled", fp8_linears(granularity, True))
            if args.breakdown and made:
                rows[f"fp8 linears per-{granularity} + fp8 attention compiled"]["kernels_ms"] = breakdown(
                    torch, made[-1], inputs
                )
            made.clear()
        if f"{granularity}" in args.variants:
            measure(f"fp8 linears per-{granularity} compiled", fp8_linears(granularity, False))
            made.clear()


KERNEL_KINDS = (
    ("attention", ("fmha", "sdpa", "flash", "attn", "cudnn")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "scaled_mm", "matmul", "sm90")),
    ("fused elementwise/reductions (triton)", ("triton",)),
)


def breakdown(torch, module, inputs) -> dict:
    """GPU time of one forward by kernel kind (torch.profiler), in ms."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        module(**inputs)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    top: dict[str, float] = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if us <= 0:
            continue
        name = event.key.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in name for w in words)), "other")
        totals[kind] = totals.get(kind, 0.0) + us / 1000
        top[event.key[:90]] = us / 1000
    result = {k: round(v, 1) for k, v in totals.items()}
    result["top"] = {k: round(v, 1) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]}
    log(f"breakdown: {result}")
    return result


def write(result: dict, args) -> Path:
    return write_result(f"attention-{slug(result['card'])}{('-' + slug(args.tag)) if args.tag else ''}", result)


def table(result: dict) -> None:
    print("\n| kernel | " + " | ".join(SHAPES) + " |")
    print("| --- |" + " --- |" * len(SHAPES))
    labels = ("bf16 cudnn", "bf16 flash", "fp8 cudnn (with quantize)", "fp8 cudnn (kernel only)")
    for label in labels:
        cells = []
        for name in SHAPES:
            cell = result.get("kernels", {}).get(name, {}).get(label, {})
            cells.append(f"{cell['ms']} ms ({cell['tflops']} TF/s)" if "ms" in cell else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, row in result.get("accuracy", {}).items():
        print(f"accuracy {name}: min layer cos {row['min_layer_cos']}, noise prediction {row['noise_prediction']}")
    rows = result.get("step_720p", {})
    exact = rows.get("exact compiled", {}).get("s")
    plain = rows.get("plain eager", {}).get("s")
    print("\n| 720p guided forward | s | vs exact | vs plain |\n| --- | --- | --- | --- |")
    for label, row in rows.items():
        if "s" in row:
            vs_exact = f"{exact / row['s']:.2f}x" if exact else "-"
            vs_plain = f"{plain / row['s']:.2f}x" if plain else "-"
            print(f"| {label} | {row['s']:.3f} | {vs_exact} | {vs_plain} |")
        else:
            print(f"| {label} | {row} | | |")
    print(f"card: {result['card']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--budget-s", type=float, default=520)
    parser.add_argument("--skip", nargs="*", default=[], choices=["kernels", "accuracy", "linears", "step"])
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["exact", "fp8-attention", "row+attention", "row"],
        help="720p forwards to time: exact, fp8-attention, <granularity>, <granularity>+attention",
    )
    parser.add_argument("--linears", nargs="*", default=["row", "tensor"], help="FP8 linear scale granularities")
    parser.add_argument("--breakdown", action="store_true", help="profile kernel time by kind for FP8 variants")
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    from serve_app.config import load_model_profile
    from serve_app.pipeline.fp8_attention import fp8_attention_supported
    from serve_app.pipeline.loading import load_pipeline

    ok, why = fp8_attention_supported()
    result: dict = {"card": card_name(), "torch": torch.__version__, "not_run": NOT_RUN, "fp8_attention": why}
    if not ok:
        raise SystemExit(f"FP8 attention is not available here: {why}")
    import cudnn

    result["cudnn_backend"] = cudnn.backend_version_string()
    result["cudnn_frontend"] = getattr(cudnn, "__version__", "?")
    if "kernels" not in args.skip:
        kernels(torch, result)
        write(result, args)
    pipe = load_pipeline(load_model_profile(args.profile), Path(args.data_dir), "denoiser")
    transformer = pipe.transformer
    result["attention_backend"] = load_model_profile(args.profile).attention_backend
    if "accuracy" not in args.skip:
        accuracy(torch, transformer, result)
        write(result, args)
    if "linears" not in args.skip:
        linears_accuracy(torch, transformer, result)
        write(result, args)
    if "step" not in args.skip:
        step_times(torch, transformer, result, args, deadline=started + args.budget_s - 60)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    path = write(result, args)
    table(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
