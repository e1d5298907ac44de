"""GPU speed: plain `WanPipeline.__call__` vs the project's path, same weights, seed and settings.

    python bench/bench_gpu.py --profile wan2.2-ti2v-5b-random      # on an H100 / H200

One process, one set of random 5B weights (DiT, VAE and UMT5-XXL, bf16):
  plain    diffusers as a user calls it: pipe(prompt, negative_prompt, ...,
           output_type="np"), SDPA attention, no compile;
  project  encode_prompts -> denoise_optimized (regional compile, sync-free
           scheduler, guidance as one batch-2 forward, one timestep per sample,
           the fastest SDPA kernel measured here) -> streaming VAE decode + mp4
           (fused norms). Prompt encoding as the prompt encoder does it: one
           UMT5 pass per text, the presets' negative prompt from its per-text
           cache (encoded once, as every replica does after its first request),
           the prompt encoded every run; UMT5 compiled if that measured faster.
           It ends with an mp4 (the plain run with numpy frames), so it does
           more work, not less.
Settings: preview (640x480x17, 20 steps), 832x480x81 (20 steps), official
(1280x704x121, 50 steps; both paths run 3 steps with a synchronised clock per
step and are extrapolated to 50: total(3) + 47 x median step, printed as such).
Guidance is the preset's (5.0; any value > 1 costs the same).
Sections, in order: the card's bf16 matmul rate (8192^3); plain runs; the
project's set-up (SDPA kernels timed at 720p, the fastest taken; compile and
warm-up); the text encoder eager vs compiled; VAE (bf16 vs fp32 PSNR,
contiguous vs channels-last Conv3d weights, one-shot / streaming / tiled
decode, x264 settings, fused norms; the faster layout and mode stay on, and so
do the fused norms); the project's runs; the DiT's achieved share of the
matmul rate (FLOPs from the architecture); cross-request batching at 1/2/4/8
requests; the fast tier (First-Block-Cache thresholds --fbc, FP8 with --fp8)
with PSNR against the exact path on the same seed, and the chosen one at
official for all 50 steps; whole-forward CUDA graphs at preview; FP8 eager at
720p.
Every section is guarded: a failure is recorded and the rest still runs; the
JSON is rewritten after each section (bench/results/gpu-<card>.json and, when
set, $OUT/gpu-<card>.json), and the table is printed last. --smoke runs the
same code on the tiny model at tiny sizes (CPU), to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, write_result  # noqa: E402
from serve_app.config import load_model_profile, load_presets  # noqa: E402
from serve_app.deadline import Deadline, StepGuard  # noqa: E402
from serve_app.params import GenerationParams  # noqa: E402

PROMPT = "a red fox running through fresh snow, golden hour, cinematic"
SEED = 1234
OFFICIAL_PROBE_STEPS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, args) -> None:
        import torch

        self.args = args
        self.t0 = time.perf_counter()
        self.torch = torch
        self.card = card_name()
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.result: dict = {"profile": args.profile, "torch": torch.__version__, "sections": {}, "errors": {}}
        self.rows: list[dict] = []
        self.negative_cache: dict = {}
        self.preset_negatives = {p.negative_prompt for p in load_presets().presets.values()}

    # --- plumbing ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def section(self, name: str, fn, min_left: float = 0.0):
        if self.left() < min_left:
            self.result["errors"][name] = f"skipped: {self.left():.0f}s of budget left, needs ~{min_left:.0f}s"
            log(f"SKIP {name}: {self.result['errors'][name]}")
            return None
        log(f"--- {name} (t={self.elapsed():.0f}s)")
        started = time.perf_counter()
        try:
            out = fn()
            self.result["sections"][name] = {"ok": True, "wall_s": round(time.perf_counter() - started, 1)}
            return out
        except Exception as exc:  # keep going: one failed variant must not cost the run
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"
            self.result["sections"][name] = {"ok": False, "wall_s": round(time.perf_counter() - started, 1)}
            log(f"FAILED {name}: {exc}")
            traceback.print_exc()
            self.torch.cuda.empty_cache()
            return None
        finally:
            self.save()

    def save(self) -> None:
        self.result["rows"] = self.rows
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        name = f"gpu-{slug(self.card)}"
        path = write_result(name, dict(self.result))
        out = os.environ.get("OUT")
        if out:
            Path(out, path.name).write_text(path.read_text())

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn):
        torch = self.torch
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        out = fn()
        self.sync()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0
        return out, time.perf_counter() - started, peak

    def shape(self, name: str) -> tuple[int, int, int]:
        """(height, width, frames) of a setting; --smoke shrinks them for a CPU dry run of this script."""
        full = {"preview": (480, 640, 17), "standard": (480, 832, 81), "official": (704, 1280, 121),
                "preview9": (480, 640, 9)}[name]
        if self.args.smoke:
            return {"preview": (64, 96, 9), "standard": (64, 128, 13), "official": (96, 128, 17),
                    "preview9": (64, 96, 5)}[name]
        return full

    def params(self, preset: str, steps: int | None = None) -> GenerationParams:
        p = load_presets().presets[preset]
        height, width, frames = self.shape(preset)
        steps = steps or p.num_inference_steps
        if self.args.smoke:
            steps = min(steps, 4)
        return GenerationParams(
            prompt=PROMPT, negative_prompt=p.negative_prompt, width=width, height=height,
            num_frames=frames, num_inference_steps=steps,
            guidance_scale=p.guidance_scale, fps=p.fps, seed=SEED, preset=preset,
        )

    # --- sections ----------------------------------------------------------------------
    def matmul_rate(self) -> float:
        torch = self.torch
        n = 8192 if self.cuda else 512
        a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        self.sync()
        times = []
        for _ in range(10):
            started = time.perf_counter()
            a @ b
            self.sync()
            times.append(time.perf_counter() - started)
        rate = 2 * n**3 / statistics.median(times) / 1e12
        self.result["bf16_matmul_tflops"] = round(rate, 1)
        log(f"bf16 matmul 8192^3: {rate:.0f} TFLOP/s")
        return rate

    def build(self) -> None:
        from serve_app.pipeline.loading import load_pipeline

        self.profile = load_model_profile(self.args.profile)
        started = time.perf_counter()
        self.pipe = load_pipeline(self.profile, Path(self.args.data_dir), "all")
        self.result["build_s"] = round(time.perf_counter() - started, 1)
        log(f"built {self.args.profile} in {self.result['build_s']}s")

    def plain_call(self, params: GenerationParams, on_step=None):
        torch = self.torch

        def cb(pipe, i, t, kw):
            if on_step is not None:
                on_step(i + 1)
            return {}

        return self.pipe(
            prompt=params.prompt, negative_prompt=params.negative_prompt, height=params.height, width=params.width,
            num_frames=params.num_frames, num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale, generator=torch.Generator(self.device).manual_seed(params.seed),
            output_type="np", callback_on_step_end=cb if on_step else None,
        ).frames[0]

    def project_call(self, params: GenerationParams, knobs=None, on_step=None, keep: dict | None = None):
        from serve_app.pipeline import stages
        from serve_app.pipeline.batching import denoise_optimized
        from serve_app.settings.speed import EXACT

        emb = stages.encode_prompts(self.pipe, params.prompt, params.negative_prompt, params.guidance_scale,
                                    self.profile.max_sequence_length, encode=self.encode_with_cache)
        guard = StepGuard(Deadline.after(3600), params.num_inference_steps)
        latents = denoise_optimized(self.runtime, params, emb, guard,
                                    on_step=(lambda s, t: on_step(s)) if on_step else None, knobs=knobs or EXACT)
        if keep is not None:
            keep["latents"] = latents
        decode_started = time.perf_counter()
        video = stages.decode_to_mp4(self.pipe, latents, params.fps, mode=getattr(self, "decode_mode", "streaming"))
        if keep is not None:
            keep["decode_s"] = time.perf_counter() - decode_started
        return video

    def encode_with_cache(self, text: str):
        """The prompt encoder's per-text cache as the bench sees it: the presets' negative
        prompt (every request that keeps the default shares it) is encoded once, the
        prompt every run."""
        from serve_app.pipeline import stages

        if text not in self.preset_negatives:
            return stages.encode_text(self.pipe, text, self.profile.max_sequence_length)
        if text not in self.negative_cache:
            self.negative_cache[text] = stages.encode_text(self.pipe, text, self.profile.max_sequence_length)
        return self.negative_cache[text]

    def frames_of(self, latents):
        import numpy as np

        from serve_app.pipeline import stages

        return np.concatenate([c.cpu().numpy() for c in stages.iter_decoded_frames(self.pipe, latents)])

    def stepped(self, run, params):
        """Run with a synchronised clock after each step: (total_s, median step_s, peak GiB)."""
        stamps = []

        def on_step(step):
            self.sync()
            stamps.append(time.perf_counter())

        _, total, peak = self.timed(lambda: run(params, on_step=on_step))
        steps = [b - a for a, b in zip(stamps, stamps[1:])]
        return total, statistics.median(steps), peak

    def add_row(self, setting: str, path: str, seconds: float, peak: float, note: str = "", **extra) -> None:
        row = {"setting": setting, "path": path, "time_s": round(seconds, 3), "peak_gib": round(peak, 2),
               "note": note, **extra}
        self.rows.append(row)
        log(f"ROW {row}")

    def plain_runs(self) -> None:
        from serve_app.video import frames_to_uint8

        warm = self.params("preview", steps=2)
        self.timed(lambda: self.plain_call(warm))
        p = self.params("preview")
        times, peak = [], 0.0
        for _ in range(3):
            frames, t, peak = self.timed(lambda: self.plain_call(p))
            times.append(t)
        self.plain_preview_frames = frames_to_uint8(frames)
        self.add_row("preview 640x480x17, 20 steps", "plain", statistics.median(times), peak,
                     runs=[round(x, 3) for x in times])
        p = self.params("standard", steps=20)
        _, t, peak = self.timed(lambda: self.plain_call(p))
        self.add_row("832x480x81, 20 steps", "plain", t, peak)
        p = self.params("official", steps=OFFICIAL_PROBE_STEPS)
        total, step, peak = self.stepped(lambda q, on_step: self.plain_call(q, on_step), p)
        self.plain_official_step = step
        est = total + (50 - OFFICIAL_PROBE_STEPS) * step
        self.add_row("official 1280x704x121, 50 steps", "plain", est, peak,
                     note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
                     probe_total_s=round(total, 3), step_s=round(step, 4))

    def attention_kernels(self) -> str:
        """Time SDPA kernels on the DiT's 720p self-attention (batch 2, 24 heads x 128, 27,280 tokens)."""
        torch = self.torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if not self.cuda:
            raise RuntimeError("SDPA kernels are timed on CUDA only")
        q, k, v = (torch.randn(2, 24, 27280, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * 2 * 24 * 27280 * 27280 * 128
        out = {}
        for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    for _ in range(2):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    self.sync()
                    started = time.perf_counter()
                    for _ in range(5):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    self.sync()
                t = (time.perf_counter() - started) / 5
                out[name] = {"ms": round(t * 1000, 2), "tflops": round(flops / t / 1e12, 1)}
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        self.result["attention_720p"] = out
        log(f"attention 720p: {out}")
        ok = {k: v["ms"] for k, v in out.items() if "ms" in v}
        best = min(ok, key=ok.get) if ok else "sdpa"
        if self.args.attention != "auto":
            best = self.args.attention
        return best

    def setup_project(self) -> None:
        from serve_app.pipeline.loading import set_attention_backend
        from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
        from serve_app.pipeline.optimize import attention_in_effect
        from serve_app.settings.speed import SpeedOptions

        backend = self.attention_kernels() if self.cuda else "sdpa"
        set_attention_backend(self.pipe.transformer, backend)
        self.result["attention_backend"] = backend
        self.result["attention_in_effect"] = attention_in_effect(self.pipe.transformer)
        self.speed = SpeedOptions(compile="default", compile_dynamic=True, cfg_batch=True,
                                  cudnn_benchmark=self.cuda)
        self.result["speed_options"] = self.speed.model_dump()
        self.runtime = DenoiserRuntime(self.pipe, self.speed)
        started = time.perf_counter()
        shapes = [(p.height, p.width, p.num_frames) for p in (self.params(n) for n in ("preview", "standard",
                                                                                          "official"))]
        # Guided only: the bench never runs unguided (the service warms both).
        self.runtime.warm_up(shapes, self.profile.max_sequence_length, steps=2, guidance=(5.0,))
        self.result["compile_and_warmup_s"] = round(time.perf_counter() - started, 1)
        self.result["warmup_s"] = self.runtime.warmup_s
        self.result["fullgraph_error"] = self.runtime.fullgraph_error
        from torch._dynamo.utils import counters

        self.result["dynamo_unique_graphs_after_warmup"] = counters["stats"]["unique_graphs"]
        # The VAE's first decode per shape (cuDNN benchmark) happens here too.
        from serve_app.pipeline import stages

        for name in ("preview", "standard", "official"):
            p = self.params(name, steps=1)
            if name == "official":  # 720p decode alone; a DiT step there was warmed above
                z = self.torch.randn(1, 48, (p.num_frames - 1) // 4 + 1, p.height // 16, p.width // 16)
                stages.decode_to_mp4(self.pipe, z, p.fps)
            else:
                self.project_call(p)
        self.result["vae_warmup_s"] = round(time.perf_counter() - started, 1) - self.result["compile_and_warmup_s"]

    def project_runs(self) -> None:
        p = self.params("preview")
        times, peak, keep = [], 0.0, {}
        for _ in range(3):
            _, t, peak = self.timed(lambda: self.project_call(p, keep=keep))
            times.append(t)
        self.exact_preview_latents = keep["latents"]
        frames = self.frames_of(keep["latents"])
        self.exact_preview_frames = frames
        psnr = _psnr(frames, self.plain_preview_frames)
        self.result["exact_vs_plain_preview_psnr_db"] = psnr
        plain = self._plain_row("preview")
        self.add_row("preview 640x480x17, 20 steps", "project exact", statistics.median(times), peak,
                     runs=[round(x, 3) for x in times], psnr_vs_plain_db=psnr,
                     decode_s=round(keep["decode_s"], 3), ratio=round(plain / statistics.median(times), 2))
        p = self.params("standard", steps=20)
        _, t, peak = self.timed(lambda: self.project_call(p, keep=keep))
        self.add_row("832x480x81, 20 steps", "project exact", t, peak, decode_s=round(keep["decode_s"], 3),
                     ratio=round(self._plain_row("832x480x81") / t, 2))
        p = self.params("official", steps=OFFICIAL_PROBE_STEPS)
        total, step, peak = self.stepped(lambda q, on_step: self.project_call(q, on_step=on_step, keep=keep), p)
        est = total + (50 - OFFICIAL_PROBE_STEPS) * step
        self.exact_official_step = step
        self.add_row("official 1280x704x121, 50 steps", "project exact", est, peak,
                     note=f"extrapolated: {OFFICIAL_PROBE_STEPS}-step run {total:.2f}s + 47 x {step:.3f}s/step",
                     probe_total_s=round(total, 3), step_s=round(step, 4), decode_s=round(keep["decode_s"], 3),
                     ratio=round(self._plain_row("official") / est, 2))

    def _plain_row(self, prefix: str) -> float:
        return next(r["time_s"] for r in self.rows if r["path"] == "plain" and r["setting"].startswith(prefix))

    def dit_efficiency(self) -> None:
        torch = self.torch
        from serve_app.pipeline.optimize import dit_flops

        tr = self.pipe.transformer
        rate = self.result.get("bf16_matmul_tflops") or self.matmul_rate()
        out = {}
        dtype, text_dim = tr.dtype, tr.config.text_dim
        for name, (h, w, f) in {"720p": self.shape("official"), "preview": self.shape("preview")}.items():
            for batch in (1, 2):
                lat = torch.randn(batch, 48, (f - 1) // 4 + 1, h // 16, w // 16, device=self.device, dtype=dtype)
                ts = torch.full((batch,), 500, device=self.device, dtype=torch.long)
                enc = torch.randn(batch, 512, text_dim, device=self.device, dtype=dtype)
                tokens = lat.shape[2] * (h // 32) * (w // 32)
                with torch.inference_mode():
                    for _ in range(2):
                        tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                    self.sync()
                    n = 3 if name == "720p" else 10
                    started = time.perf_counter()
                    for _ in range(n):
                        tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                    self.sync()
                t = (time.perf_counter() - started) / n
                flops = dit_flops(tr.config, batch, tokens, 512)
                out[f"{name} batch {batch}"] = {"ms": round(t * 1000, 1), "tokens": tokens,
                                                 "tflop": round(flops / 1e12, 1),
                                                 "tflops": round(flops / t / 1e12, 1),
                                                 "share_of_matmul": round(flops / t / 1e12 / rate, 3)}
        self.result["dit_forward_compiled"] = out
        log(f"DiT forward: {out}")

    def cuda_graphs(self) -> None:
        torch = self.torch
        from serve_app.pipeline.optimize import GraphedForward

        tr = self.pipe.transformer
        out = {}
        if not self.cuda:
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
                for label, fn in (("direct", lambda: tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc,
                                                         return_dict=False)[0]),
                                  ("graph", lambda: graphs(lat, ts, enc))):
                    # Synchronised per call, like a step that ends in a host sync.
                    times = []
                    for _ in range(10):
                        self.sync()
                        started = time.perf_counter()
                        fn()
                        self.sync()
                        times.append(time.perf_counter() - started)
                    res[label] = round(statistics.median(times) * 1000, 2)
            res["max_abs_diff"] = diff
            out[name] = res
            del graphs
        torch.cuda.empty_cache()
        self.result["cuda_graphs"] = out
        log(f"CUDA graphs: {out}")

    def vae(self) -> None:
        """VAE precision, layout and decode modes; leaves the faster Conv3d layout on for the project path."""
        torch = self.torch
        from serve_app.pipeline import stages
        from serve_app.pipeline.batching import denoise_optimized
        from serve_app.pipeline.optimize import set_vae_channels_last
        from serve_app.video import encode_mp4, frames_to_uint8

        out = {}
        p = self.params("preview")
        emb = stages.encode_prompts(self.pipe, p.prompt, p.negative_prompt, p.guidance_scale,
                                    self.profile.max_sequence_length)
        lat = denoise_optimized(self.runtime, p, emb, StepGuard(Deadline.after(3600), p.num_inference_steps))
        bf16 = frames_to_uint8(stages.decode_latents(self.pipe, lat))
        vae_bf16 = self.pipe.vae
        self.pipe.vae = copy.deepcopy(vae_bf16).float()
        try:
            stages.decode_latents(self.pipe, lat)
            fp32, t32, _ = self.timed(lambda: frames_to_uint8(stages.decode_latents(self.pipe, lat)))
        finally:
            self.pipe.vae = vae_bf16
            torch.cuda.empty_cache()
        out["preview_bf16_vs_fp32_psnr_db"] = _psnr(bf16, fp32)
        out["preview_fp32_decode_s"] = round(t32, 3)
        s = self.params("standard")
        lat832 = torch.randn(1, 48, (s.num_frames - 1) // 4 + 1, s.height // 16, s.width // 16,
                             generator=torch.Generator().manual_seed(0))
        layouts = {}
        for layout in ("contiguous", "channels_last"):
            set_vae_channels_last(self.pipe.vae, layout == "channels_last")
            res = {}
            for label, z, fps in (("preview", lat, p.fps), ("832x480x81", lat832, s.fps)):
                modes = ["oneshot", "streaming"] + (["tiled", "streaming-1thread"] if layout == "contiguous" else [])
                for mode in modes:
                    opts = {"preset": "veryfast", "crf": "20", "threads": "1"} if mode.endswith("1thread") else None
                    m = mode.split("-")[0]
                    stages.decode_to_mp4(self.pipe, z, fps, mode=m, tile_on_oom=False, codec_options=opts)  # autotune
                    v, t, peak = self.timed(lambda: stages.decode_to_mp4(self.pipe, z, fps, mode=m, tile_on_oom=False,
                                                                         codec_options=opts))
                    res[f"{label} {mode}"] = {"total_s": round(t, 3), "decode_s": round(v.decode_s, 3),
                                              "encode_tail_s": round(v.encode_s, 3), "peak_gib": round(peak, 2),
                                              "mp4_bytes": len(v.mp4)}
            layouts[layout] = res
            log(f"VAE {layout}: {res}")
        out["decode"] = layouts
        cl = layouts["channels_last"]["preview streaming"]["total_s"]
        co = layouts["contiguous"]["preview streaming"]["total_s"]
        use_cl = cl < co * 0.97
        best = layouts["channels_last" if use_cl else "contiguous"]
        self.decode_mode = min(("oneshot", "streaming"), key=lambda m: best[f"preview {m}"]["total_s"])
        self.result["decode_mode"] = self.decode_mode
        set_vae_channels_last(self.pipe.vae, use_cl)
        frames_cl = frames_to_uint8(stages.decode_latents(self.pipe, lat))
        out["channels_last_vs_contiguous_psnr_db"] = _psnr(frames_cl, bf16)
        out["channels_last_used"] = use_cl
        self.result["vae_channels_last"] = use_cl
        o = self.params("official")
        z = torch.randn(1, 48, (o.num_frames - 1) // 4 + 1, o.height // 16, o.width // 16)
        stages.decode_to_mp4(self.pipe, z, o.fps)  # the 720p decode's cuDNN autotune, outside timed runs
        frames = frames_to_uint8(stages.decode_latents(self.pipe, lat832))
        presets = {}
        for name, opts in {
            "veryfast crf20 threads auto (default)": None,
            "veryfast crf20 1 thread (reproducible)": {"preset": "veryfast", "crf": "20", "threads": "1"},
            "superfast crf20 threads auto": {"preset": "superfast", "crf": "20"},
            "ultrafast crf20 threads auto": {"preset": "ultrafast", "crf": "20"},
        }.items():
            started = time.perf_counter()
            data = encode_mp4(frames, s.fps, opts)
            presets[name] = {"s": round(time.perf_counter() - started, 3), "bytes": len(data)}
        out["x264_832x480x81"] = presets
        out["fused_norms"] = self.fused_norms(lat, lat832, p.fps, s.fps)
        self.result["vae"] = out
        log(f"VAE: {out}")

    def fused_norms(self, lat, lat832, fps, fps832) -> dict:
        """Decode+mp4 with the VAE's norms compiled (SiLU folded in) vs as they are; they stay on."""
        from serve_app.pipeline import stages
        from serve_app.pipeline.optimize import fuse_vae_norms
        from serve_app.video import frames_to_uint8

        mode = self.decode_mode
        before = frames_to_uint8(stages.decode_latents(self.pipe, lat))
        out = {}
        for label, z, f in (("preview", lat, fps), ("832x480x81", lat832, fps832)):
            _, out[f"{label} unfused_s"], _ = self.timed(lambda: stages.decode_to_mp4(self.pipe, z, f, mode=mode))
        out["norms"] = fuse_vae_norms(self.pipe.vae)
        started = time.perf_counter()
        for label, z, f in (("preview", lat, fps), ("832x480x81", lat832, fps832)):
            stages.decode_to_mp4(self.pipe, z, f, mode=mode)  # compiles (symbolic shapes: once)
            _, out[f"{label} fused_s"], _ = self.timed(lambda: stages.decode_to_mp4(self.pipe, z, f, mode=mode))
        out["compile_s"] = round(time.perf_counter() - started, 1)
        out["fused_vs_unfused_psnr_db"] = _psnr(frames_to_uint8(stages.decode_latents(self.pipe, lat)), before)
        self.result["vae_fused_norms"] = True
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}

    def text_encoder(self) -> None:
        """One text through UMT5-XXL, eager vs regionally compiled; the faster stays on."""
        from serve_app.pipeline import stages
        from serve_app.pipeline.optimize import compile_text_encoder, uncompile_blocks

        p = self.params("preview")
        n = self.profile.max_sequence_length

        def median(fn, runs=5):
            return statistics.median(self.timed(fn)[1] for _ in range(runs))

        out = {"eager_s": median(lambda: stages.encode_text(self.pipe, p.prompt, n))}
        eager = stages.encode_text(self.pipe, p.prompt, n).float()
        compile_text_encoder(self.pipe.text_encoder)
        started = time.perf_counter()
        compiled = stages.encode_text(self.pipe, p.prompt, n).float()
        out["compile_s"] = round(time.perf_counter() - started, 1)
        out["compiled_s"] = median(lambda: stages.encode_text(self.pipe, p.prompt, n))
        out["max_abs_diff"] = float((compiled - eager).abs().max())
        out["kept"] = "compiled" if out["compiled_s"] < out["eager_s"] * 0.97 else "eager"
        if out["kept"] == "eager":
            uncompile_blocks(self.pipe.text_encoder)
        self.result["text_encoder"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
        log(f"text encoder: {self.result['text_encoder']}")

    def batching(self) -> None:
        from serve_app.pipeline import stages
        from serve_app.pipeline.batching import StepBatcher
        from serve_app.settings.speed import FastKnobs

        out = {}
        for label, shape in {"640x480x17": "preview", "640x480x9": "preview9"}.items():
            base = self.params("preview", steps=8)
            base = base.model_copy(update={"num_frames": self.shape(shape)[2]})
            emb = stages.encode_prompts(self.pipe, base.prompt, base.negative_prompt, base.guidance_scale,
                                        self.profile.max_sequence_length)
            res = {}
            for n in (1, 2, 4, 8):
                batcher = StepBatcher(self.runtime, max_requests=8, max_tokens=10**9)

                def run():
                    futures = [batcher.submit(base.model_copy(update={"seed": SEED + i}), emb,
                                              StepGuard(Deadline.after(3600), base.num_inference_steps), None,
                                              FastKnobs(), lambda loop: None) for i in range(n)]
                    batcher.run()
                    return [f.result() for f in futures]

                run()  # first call at this batch size: cuBLAS heuristics, allocator
                _, t, peak = self.timed(run)
                res[n] = {"s": round(t, 3), "videos_per_min": round(60 * n / t, 1), "peak_gib": round(peak, 2)}
            for n in (2, 4, 8):
                res[n]["throughput_vs_1"] = round(res[n]["videos_per_min"] / res[1]["videos_per_min"], 3)
            out[f"{label}, 8 steps, guidance"] = res
        self.result["batching"] = out
        log(f"batching: {out}")

    def fast_tier(self) -> None:
        from serve_app.pipeline.optimize import fp8_supported, make_fp8_copy
        from serve_app.settings.speed import FastKnobs

        ok, why = fp8_supported()
        self.result["fp8_supported"] = why
        ok = ok and self.args.fp8
        if ok:
            started = time.perf_counter()
            self.runtime.fp8_transformer = make_fp8_copy(self.pipe.transformer)
            self.result["fp8_copy_s"] = round(time.perf_counter() - started, 1)
        p = self.params("preview")
        variants = {f"fbc{t}": FastKnobs(step_cache_threshold=t) for t in self.args.fbc}
        if ok:
            variants["fp8"] = FastKnobs(fp8=True)
            variants["fp8+fbc0.1"] = FastKnobs(fp8=True, step_cache_threshold=0.1)
            variants["fp8+fbc0.2"] = FastKnobs(fp8=True, step_cache_threshold=0.2)
        plain = self._plain_row("preview")
        out = {}
        for name, knobs in variants.items():
            try:
                keep = {}
                counter = _BlockCounter(self.runtime.transformer_for(knobs))
                with counter:
                    self.project_call(self.params("preview", steps=2), knobs=knobs)  # compile for new tensor types
                    counter.calls = 0
                    times = []
                    for _ in range(2):
                        _, t, peak = self.timed(lambda: self.project_call(p, knobs=knobs, keep=keep))
                        times.append(t)
                    computed = counter.calls / 2
                frames = self.frames_of(keep["latents"])
                psnr = _psnr(frames, self.exact_preview_frames)
                forwards = p.num_inference_steps * (1 if self.speed.cfg_batch else 2)
                out[name] = {"s": round(min(times), 3), "psnr_vs_exact_db": psnr,
                             "full_forwards_share": round(computed / forwards, 2)}
                self.add_row("preview 640x480x17, 20 steps", f"project fast ({name})", min(times), peak,
                             psnr_vs_exact_db=psnr, full_forwards=f"{computed:.0f}/{forwards}",
                             ratio=round(plain / min(times), 2))
            except Exception as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                traceback.print_exc()
        self.result["fast_preview"] = out
        best = [k for k, v in out.items() if "s" in v]
        self.fast_official_knobs = None
        if best:
            # The best-quality variant that reaches 2.5x, else the fastest.
            good = [k for k in best if plain / out[k]["s"] >= 2.5]
            pick = (max(good, key=lambda k: out[k]["psnr_vs_exact_db"] or 0) if good
                    else min(best, key=lambda k: out[k]["s"]))
            self.fast_official_knobs = (pick, variants[pick])
            self.result["fast_pick"] = pick

    def fast_official(self) -> None:
        name, knobs = self.fast_official_knobs
        p = self.params("official")
        counter = _BlockCounter(self.runtime.transformer_for(knobs))
        keep = {}
        with counter:
            _, t, peak = self.timed(lambda: self.project_call(p, knobs=knobs, keep=keep))
        forwards = p.num_inference_steps * (1 if self.speed.cfg_batch else 2)
        self.add_row("official 1280x704x121, 50 steps", f"project fast ({name})", t, peak,
                     note="measured, all 50 steps (a step cache cannot be extrapolated)",
                     full_forwards=f"{counter.calls}/{forwards}", decode_s=round(keep["decode_s"], 3),
                     ratio=round(self._plain_row("official") / t, 2))

    def fp8_720p(self) -> None:
        """FP8 DiT forward at 720p, eager (its compile took 3.6 min in the first run): is there a gain to have?"""
        torch = self.torch
        from serve_app.pipeline.optimize import make_fp8_copy, uncompile_blocks

        fp8 = make_fp8_copy(self.pipe.transformer)
        uncompile_blocks(fp8)
        out = {}
        h, w, f = self.shape("official")
        lat = torch.randn(2, 48, (f - 1) // 4 + 1, h // 16, w // 16, device=self.device, dtype=torch.bfloat16)
        ts = torch.full((2,), 500, device=self.device, dtype=torch.long)
        enc = torch.randn(2, 512, 4096, device=self.device, dtype=torch.bfloat16)
        with torch.inference_mode():
            for label, tr in (("fp8 eager", fp8), ("bf16 compiled", self.pipe.transformer)):
                tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                self.sync()
                started = time.perf_counter()
                for _ in range(2):
                    tr(hidden_states=lat, timestep=ts, encoder_hidden_states=enc, return_dict=False)
                self.sync()
                out[label] = round((time.perf_counter() - started) / 2 * 1000, 1)
        del fp8
        torch.cuda.empty_cache()
        self.result["fp8_720p_b2_ms"] = out
        log(f"FP8 720p: {out}")

    def table(self) -> None:
        rate = self.result.get("bf16_matmul_tflops")
        dit = self.result.get("dit_forward_compiled", {}).get("720p batch 2", {})
        print()
        print(f"card: {self.card}; torch {self.torch.__version__}; profile {self.args.profile}; seed {SEED}; "
              f"attention {self.result.get('attention_backend')}")
        print(f"bf16 matmul (8192^3): {rate} TFLOP/s; DiT forward at 720p (batch 2, compiled): "
              f"{dit.get('ms')} ms = {dit.get('tflops')} TFLOP/s = {100 * dit.get('share_of_matmul', 0):.0f}% "
              f"of the matmul rate")
        print()
        print("| card | setting | path | time s | ratio vs plain | peak GiB | note |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in self.rows:
            extra = []
            if r.get("psnr_vs_exact_db") is not None:
                extra.append(f"PSNR vs exact {r['psnr_vs_exact_db']} dB")
            if r.get("psnr_vs_plain_db") is not None:
                extra.append(f"PSNR vs plain {r['psnr_vs_plain_db']} dB")
            if r.get("full_forwards"):
                extra.append(f"full forwards {r['full_forwards']}")
            note = "; ".join([r["note"]] * bool(r["note"]) + extra)
            ratio = r.get("ratio", "1.00" if r["path"] == "plain" else "")
            print(f"| {self.card} | {r['setting']} | {r['path']} | {r['time_s']:.2f} | {ratio} | {r['peak_gib']} | "
                  f"{note} |")
        goals = self.goals()
        self.result["goals"] = goals
        print()
        for g, v in goals.items():
            print(f"goal {g}: {v}")
        if self.result["errors"]:
            print(f"errors/skips: {json.dumps(self.result['errors'])[:2000]}")
        self.save()

    def goals(self) -> dict:
        def ratio(setting, path_prefix):
            rs = [r for r in self.rows if r["setting"].startswith(setting) and r["path"].startswith(path_prefix)]
            return max((r.get("ratio") or 0) for r in rs) if rs else None

        dit = self.result.get("dit_forward_compiled", {}).get("720p batch 2", {})
        out = {}
        for label, setting, path, target in (("preview exact >= 1.6x", "preview", "project exact", 1.6),
                                             ("official exact >= 1.2x", "official", "project exact", 1.2),
                                             ("preview fast >= 2.5x", "preview", "project fast", 2.5),
                                             ("official fast >= 2x", "official", "project fast", 2.0)):
            r = ratio(setting, path)
            out[label] = "not measured" if r is None else f"{r}x {'met' if r >= target else 'MISSED'}"
        share = dit.get("share_of_matmul")
        out["DiT >= 70% of bf16 matmul at 720p"] = (
            "not measured" if share is None else f"{100 * share:.0f}% {'met' if share >= 0.7 else 'MISSED'}")
        return out


class _BlockCounter:
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


def _psnr(a, b) -> float | None:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(np.mean((a - b) ** 2))
    return round(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--budget-s", type=float, default=480, help="skip remaining sections past this")
    parser.add_argument("--attention", default="auto", help="'auto' (fastest measured SDPA kernel) or a name")
    parser.add_argument("--skip", nargs="*", default=[], help="section names to skip")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: a CPU dry run of this script's code")
    parser.add_argument("--fbc", type=float, nargs="*", default=[0.3, 0.5, 0.8],
                        help="First-Block-Cache thresholds tried at preview")
    parser.add_argument("--fp8", action="store_true", help="also try compiled FP8 in the fast tier (slow compile)")
    args = parser.parse_args()
    bench = Bench(args)
    run = lambda name, fn, need=0.0: None if name in args.skip else bench.section(name, fn, need)  # noqa: E731
    run("matmul", bench.matmul_rate)
    run("build", bench.build)
    if not bench.result["sections"].get("build", {}).get("ok"):
        bench.table()
        return
    run("plain", bench.plain_runs, 60)
    run("setup_project", bench.setup_project, 60)
    if bench.result["sections"].get("setup_project", {}).get("ok"):
        run("text_encoder", bench.text_encoder, 40)
        run("vae", bench.vae, 40)
        run("project", bench.project_runs, 40)
        run("dit_efficiency", bench.dit_efficiency, 30)
        run("batching", bench.batching, 30)
        run("fast_tier", bench.fast_tier, 30)
        if getattr(bench, "fast_official_knobs", None):
            run("fast_official", bench.fast_official, 60)
        run("cuda_graphs", bench.cuda_graphs, 15)
        run("fp8_720p", bench.fp8_720p, 20)
    bench.table()


if __name__ == "__main__":
    main()
