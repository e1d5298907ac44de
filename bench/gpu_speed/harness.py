"""The harness of bench/bench_gpu.py: one model, the run's budget, timing, rows, and the two paths compared.

`Bench` holds what every section shares: the pipeline (built once, by
`build`), the result JSON (rewritten after each section, so a run cut short by
its budget or a crash still leaves the numbers measured so far) and the
table's rows. `plain_call` is diffusers as a user calls it, `project_call` the
service's path; every ratio in the table is one against the other, measured in
this process. The sections, one module each in this package, are functions of
a `Bench` and read what earlier ones left on it (listed on the class).
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import card_name, slug, write_result
from serve_app.config import load_model_profile, load_presets
from serve_app.deadline import Deadline, StepGuard
from serve_app.params import GenerationParams

if TYPE_CHECKING:
    from serve_app.config import ModelProfile
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.settings.speed import FastKnobs, SpeedOptions

PROMPT = "a red fox running through fresh snow, golden hour, cinematic"
SEED = 1234
OFFICIAL_PROBE_STEPS = 3
# --image-to-video: the image rows and the text rows their ratios are read against, nothing else.
IMAGE_TO_VIDEO_SECTIONS = ("build", "plain", "plain_image", "setup_project", "project", "project_image")


def section_wanted(args, name: str) -> bool:
    """Whether bench_gpu.py runs section `name` under these arguments (--skip, --image-to-video)."""
    if name in args.skip:
        return False
    return not getattr(args, "image_to_video", False) or name in IMAGE_TO_VIDEO_SECTIONS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    # What sections leave for later ones, by the section that sets it. Not set
    # before then, on purpose: a section that needs what a failed one did not
    # leave fails with an AttributeError naming it, recorded in "errors".
    pipe: Any  # build
    profile: ModelProfile  # build
    plain_preview_frames: Any  # plain
    plain_official_step: float  # plain
    speed: SpeedOptions  # setup_project
    runtime: DenoiserRuntime  # setup_project
    decode_mode: str  # vae (project_call decodes "streaming" until then)
    exact_preview_latents: Any  # project
    exact_preview_frames: Any  # project
    exact_official_step: float  # project
    fast_official_knobs: tuple[str, FastKnobs] | None  # fast_tier
    video_encoder: tuple[Any, Any]  # project_image: its worker thread and CUDA stream (image_to_video.py)

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
        except Exception as exc:  # noqa: BLE001 - keep going: one failed variant must not cost the run
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
        name = f"gpu-{slug(self.card)}" + (f"-{slug(self.args.tag)}" if getattr(self.args, "tag", "") else "")
        write_result(name, dict(self.result))

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

    def preview_runs(self) -> int:
        """Timed preview runs per path (the row is their median): --preview-runs, 3 unless set."""
        return getattr(self.args, "preview_runs", 3)

    def measured_presets(self) -> tuple[str, ...]:
        """The settings the plain and project text rows time. --image-to-video leaves out 832x480x81
        ("standard"), which has no image row to be compared with (and its warm-up)."""
        if getattr(self.args, "image_to_video", False):
            return ("preview", "official")
        return ("preview", "standard", "official")

    def shape(self, name: str) -> tuple[int, int, int]:
        """(height, width, frames) of a setting; --smoke shrinks them for a CPU dry run of this script."""
        full = {
            "preview": (480, 640, 17),
            "standard": (480, 832, 81),
            "official": (704, 1280, 121),
            "preview9": (480, 640, 9),
        }[name]
        if self.args.smoke:
            return {
                "preview": (64, 96, 9),
                "standard": (64, 128, 13),
                "official": (96, 128, 17),
                "preview9": (64, 96, 5),
            }[name]
        return full

    def params(self, preset: str, steps: int | None = None) -> GenerationParams:
        p = load_presets().presets[preset]
        height, width, frames = self.shape(preset)
        steps = steps or p.num_inference_steps
        if self.args.smoke:
            steps = min(steps, 4)
        return GenerationParams(
            prompt=PROMPT,
            negative_prompt=p.negative_prompt,
            width=width,
            height=height,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=p.guidance_scale,
            fps=p.fps,
            seed=SEED,
            preset=preset,
        )

    # --- the model and the two paths ------------------------------------------------------
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
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=torch.Generator(self.device).manual_seed(params.seed),
            output_type="np",
            callback_on_step_end=cb if on_step else None,
        ).frames[0]

    def project_call(self, params: GenerationParams, knobs=None, on_step=None, keep: dict | None = None):
        from serve_app.pipeline import stages
        from serve_app.pipeline.batching import denoise_optimized
        from serve_app.settings.speed import EXACT

        emb = stages.encode_prompts(
            self.pipe,
            params.prompt,
            params.negative_prompt,
            params.guidance_scale,
            self.profile.max_sequence_length,
            encode=self.encode_with_cache,
        )
        denoise_started = time.perf_counter()
        guard = StepGuard(Deadline.after(3600), params.num_inference_steps)
        latents = denoise_optimized(
            self.runtime,
            params,
            emb,
            guard,
            on_step=(lambda s, t: on_step(s)) if on_step else None,
            knobs=knobs or EXACT,
        )
        decode_started = time.perf_counter()
        if keep is not None:
            # The split the image rows carry too (denoise_optimized returns latents on the
            # CPU, so the loop's GPU work is done by then).
            keep["latents"] = latents
            keep["prompt_encode_s"] = emb.encode_s
            keep["denoise_s"] = decode_started - denoise_started
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
        row = {
            "setting": setting,
            "path": path,
            "time_s": round(seconds, 3),
            "peak_gib": round(peak, 2),
            "note": note,
            **extra,
        }
        self.rows.append(row)
        log(f"ROW {row}")

    def plain_row(self, prefix: str) -> float:
        return next(r["time_s"] for r in self.rows if r["path"] == "plain" and r["setting"].startswith(prefix))


def psnr(a, b) -> float | None:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(np.mean((a - b) ** 2))
    return round(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse), 2)
