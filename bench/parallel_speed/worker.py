"""One process of bench/bench_parallel.py: the single-GPU project path, plain diffusers, or one SPMD rank.

`run_task(task)` is the target of each spawned process. It pins the process to
its card(s) through CUDA_VISIBLE_DEVICES before torch touches CUDA (so a rank
sees its card as cuda:0, as a Ray rank actor does), builds the model with the
profile's seed (the same weights in every process: each reports a fingerprint
of its DiT and prompt embeddings, and the driver compares them), warms each
shape with 2 steps, then times each setting and writes a JSON report (rank 0
or the single process also saves its final latents for the driver's rel L2).

Torch and the project's pipeline are imported inside functions: this module is
unpickled by every spawned child before CUDA_VISIBLE_DEVICES is set.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from bench.parallel_speed.plan import GUIDANCE, PROMPT, SEED, SETTINGS, SMOKE_SETTINGS, Job
from bench.parallel_speed.plan import estimate_setting_s as estimate_s


def log(task: dict, msg: str) -> None:
    who = task["job"] + (f" r{task['rank']}" if task["kind"] == "parallel" else "")
    print(f"[{time.strftime('%H:%M:%S')}] [{who}] {msg}", flush=True)


def report_path(out_dir: str | Path, job: str, rank: int) -> Path:
    return Path(out_dir) / f"{job}-rank{rank}.json"


def latents_path(out_dir: str | Path, job: str, setting: str) -> Path:
    return Path(out_dir) / f"{job}-{setting}.pt"


def run_task(task: dict) -> None:
    """Entry of a spawned process. `task`: kind, job, rank, world, devices, settings, deadline
    (time.time() by which to be done), out_dir, data_dir, profile, smoke, master_port, timeout_s."""
    if task["cuda"]:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in task["devices"])
    # The GPU host asks for NVLink multicast off; keep it off also where the parent forgot.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    report: dict[str, Any] = {"job": task["job"], "kind": task["kind"], "rank": task["rank"], "settings": {}}
    try:
        {"project": run_project, "plain": run_plain, "parallel": run_rank}[task["kind"]](task, report)
    except BaseException as exc:  # noqa: BLE001 - the report carries the failure to the driver
        report["error"] = "".join(traceback.format_exception(exc))[-3000:]
        log(task, f"FAILED: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    finally:
        path = report_path(task["out_dir"], task["job"], task["rank"])
        path.with_suffix(".tmp").write_text(json.dumps(report, indent=1))
        path.with_suffix(".tmp").replace(path)


# --- shared pieces ------------------------------------------------------------------------------


class Model:
    """The pipeline of one process, its speed options, and the requests of each setting."""

    def __init__(self, task: dict, report: dict) -> None:
        import torch

        from serve_app.config import load_model_profile, load_presets
        from serve_app.pipeline.loading import load_pipeline
        from serve_app.settings.speed import SpeedOptions

        self.task, self.torch = task, torch
        self.cuda = torch.cuda.is_available()
        self.settings = SMOKE_SETTINGS if task["smoke"] else SETTINGS
        self.presets = load_presets().presets
        self.profile = load_model_profile(task["profile"])
        started = time.perf_counter()
        # Every component, in every process: the seed is set once before the text encoder is
        # built, so only the same list of components gives the same DiT weights everywhere.
        self.pipe = load_pipeline(self.profile, Path(task["data_dir"]), "all")
        report["build_s"] = round(time.perf_counter() - started, 2)
        report["device"] = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        report["visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        # The exact path only: no FP8 variants to build or compile (nor a cuDNN frontend to need).
        self.speed = SpeedOptions.model_validate(
            {**self.profile.speed.model_dump(), "fp8_weights": False, "fp8_attention": False, "fast": {}}
        )
        report["speed"] = self.speed.model_dump(include={"compile", "compile_dynamic", "cfg_batch", "cudnn_benchmark"})
        report["weights_fingerprint"] = fingerprint(torch, self.pipe.transformer.parameters())
        log(task, f"built in {report['build_s']} s on {report['device']}")

    def params(self, setting: str, steps: int | None = None):
        from serve_app.params import GenerationParams

        s = self.settings[setting]
        preset = self.presets[s.preset]
        return GenerationParams(
            prompt=PROMPT,
            negative_prompt=preset.negative_prompt,
            width=s.width,
            height=s.height,
            num_frames=s.frames,
            num_inference_steps=steps or s.steps,
            guidance_scale=GUIDANCE,
            fps=preset.fps,
            seed=SEED,
            preset=s.preset,
        )

    def embeddings(self, report: dict):
        from serve_app.pipeline import stages

        # Same weights and text in every process: same embeddings (their fingerprint says so).
        p = self.params(next(iter(self.task["settings"])))
        emb = stages.encode_prompts(
            self.pipe, p.prompt, p.negative_prompt, p.guidance_scale, self.profile.max_sequence_length
        )
        report["embeddings_fingerprint"] = fingerprint(self.torch, [emb.prompt_embeds, emb.negative_prompt_embeds])
        return emb

    def guard(self, steps: int):
        from serve_app.deadline import Deadline, StepGuard

        return StepGuard(Deadline.after(3600), steps)

    def random_latents(self, setting: str):
        """Latents of a setting's shape, the same in every process (a seeded CPU generator)."""
        s = self.settings[setting]
        vae = self.pipe.vae
        shape = (
            1,
            vae.config.z_dim,
            (s.frames - 1) // self.pipe.vae_scale_factor_temporal + 1,
            s.height // self.pipe.vae_scale_factor_spatial,
            s.width // self.pipe.vae_scale_factor_spatial,
        )
        return self.torch.randn(shape, generator=self.torch.Generator().manual_seed(SEED))

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn) -> tuple[Any, float]:
        self.sync()
        started = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - started

    def skip_reason(self, job: Job, setting: str) -> str | None:
        """Why a setting would not fit the deadline (None: it fits). Estimates are H100 seconds,
        scaled by task["estimate_scale"] (0 for --smoke, where the tiny model takes none)."""
        need = estimate_s(job, setting) * self.task["estimate_scale"]
        left = self.task["deadline"] - time.time()
        return None if need <= left else f"skipped: {left:.0f} s of budget left, needs ~{need:.0f} s"

    def peak_gib(self) -> float:
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else 0.0


def fingerprint(torch, tensors) -> str:
    """A float64 checksum of tensors, each weighted by its position: equal weights in two
    processes give equal strings (torch's reductions are deterministic on one card type)."""
    total = 0.0
    with torch.inference_mode():
        for i, t in enumerate(tensors):
            if t is not None:
                total += float(t.detach().double().sum()) * (1 + i % 7) + float(t.detach().double().abs().sum())
    return f"{total:.17g}"


def save_latents(task: dict, setting: str, latents) -> str:
    import torch

    path = latents_path(task["out_dir"], task["job"], setting)
    torch.save(latents.detach().float().cpu(), path)
    return str(path)


# --- the three kinds ----------------------------------------------------------------------------


def frames_1gpu(pipe, latents):
    """uint8 frames (F, H, W, 3) on the CPU, decoded as a single-GPU replica decodes (streaming,
    latent frame by latent frame): what `decode_parallel` returns with one rank."""
    import torch

    from serve_app.pipeline.stages import iter_decoded_frames

    return torch.cat([chunk.cpu() for chunk in iter_decoded_frames(pipe, latents)]).numpy()


def save_frames(task: dict, setting: str, frames) -> str:
    """The frames a process decoded from the shared random latents (the VAE's warm-up), so the
    driver can compare the parallel decode with the single-GPU one on the same input."""
    import numpy as np

    path = Path(task["out_dir"]) / f"{task['job']}-{setting}-frames.npy"
    np.save(path, frames)
    return str(path)


def run_project(task: dict, report: dict) -> None:
    """The service's single-GPU path: DenoiserRuntime + denoise_optimized, then the decodes."""
    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.pipeline.optimize import prepare_vae
    from serve_app.pipeline.stages import decode_latents
    from serve_app.settings.speed import EXACT

    model = Model(task, report)
    job = Job("project", 1)
    emb = model.embeddings(report)
    started = time.perf_counter()
    runtime = DenoiserRuntime(model.pipe, model.speed)
    prepare_vae(model.pipe.vae, model.speed)
    shapes = [(s.height, s.width, s.frames) for s in (model.settings[k] for k in task["settings"])]
    runtime.warm_up(
        shapes, model.profile.max_sequence_length, steps=task["warmup_steps"], guidance=(GUIDANCE,), knob_sets=[EXACT]
    )
    report["compile_and_warmup_s"] = round(time.perf_counter() - started, 2)
    report["warmup_s"] = {k: round(v, 2) for k, v in runtime.warmup_s.items()}
    for setting in task["settings"]:
        out = report["settings"][setting] = {}
        reason = model.skip_reason(job, setting)
        if reason:
            out["skipped"] = reason
            continue
        # The VAE's first run at this shape (cuDNN autotuning, fused norms' compile), on the
        # latents every process shares: its frames are the parallel decode's reference.
        out["warm_frames"] = save_frames(task, setting, frames_1gpu(model.pipe, model.random_latents(setting)))
        if model.cuda:
            model.torch.cuda.reset_peak_memory_stats()
        p = model.params(setting)
        latents, seconds = model.timed(
            lambda p=p: denoise_optimized(runtime, p, emb, model.guard(p.num_inference_steps), knobs=EXACT)
        )
        out.update(time_s=round(seconds, 3), peak_gib=model.peak_gib(), latents=save_latents(task, setting, latents))
        _, decode_s = model.timed(lambda: frames_1gpu(model.pipe, latents))
        out["decode_s"] = round(decode_s, 3)
        try:  # WanPipeline's own tail (one-shot, float frames), which the brief names as the baseline
            _, oneshot_s = model.timed(lambda: decode_latents(model.pipe, latents))
            out["decode_latents_s"] = round(oneshot_s, 3)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the streaming figure stands
            out["decode_latents_error"] = f"{type(exc).__name__}: {exc}"[:300]
            model.torch.cuda.empty_cache() if model.cuda else None
        log(task, f"{setting}: denoise {out['time_s']} s, decode {out['decode_s']} s")


def run_plain(task: dict, report: dict) -> None:
    """`WanPipeline.__call__` as a user calls it (prompt strings, no compile), output_type latent;
    its time includes the two text encodings (~0.1 s at 720p), as the user's wait does."""
    model = Model(task, report)
    job = Job("plain", 1)
    torch, pipe = model.torch, model.pipe
    device = "cuda" if model.cuda else "cpu"
    report["attention_backend"] = _attention(pipe)

    def call(p):
        return pipe(
            prompt=p.prompt,
            negative_prompt=p.negative_prompt,
            height=p.height,
            width=p.width,
            num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps,
            guidance_scale=p.guidance_scale,
            generator=torch.Generator(device).manual_seed(p.seed),
            output_type="latent",
        ).frames

    for setting in task["settings"]:
        out = report["settings"][setting] = {}
        reason = model.skip_reason(job, setting)
        if reason:
            out["skipped"] = reason
            continue
        _, warm_s = model.timed(lambda: call(model.params(setting, steps=task["warmup_steps"])))
        if model.cuda:
            torch.cuda.reset_peak_memory_stats()
        latents, seconds = model.timed(lambda: call(model.params(setting)))
        out.update(time_s=round(seconds, 3), peak_gib=model.peak_gib(), warmup_s=round(warm_s, 3))
        out["latents"] = save_latents(task, setting, latents)
        log(task, f"{setting}: {out['time_s']} s")


def _attention(pipe) -> str:
    from serve_app.pipeline.optimize import attention_in_effect

    return str(attention_in_effect(pipe.transformer))


def run_rank(task: dict, report: dict) -> None:
    """One rank of the multi-GPU loop: join, the rank's runtime (compiled, context parallel),
    warm-up, then per setting the timed loop and the parallel VAE decode."""
    from serve_app.pipeline.optimize import prepare_vae
    from serve_app.pipeline.parallel.group import ParallelGroup
    from serve_app.pipeline.parallel.loop import denoise_parallel
    from serve_app.pipeline.parallel.rank import ParallelRuntime
    from serve_app.pipeline.parallel.vae_decode import decode_parallel
    from serve_app.settings.speed import EXACT

    model = Model(task, report)
    job = Job("parallel", task["world"])
    rank0 = task["rank"] == 0
    emb = model.embeddings(report)
    started = time.perf_counter()
    group = ParallelGroup.join(
        rank=task["rank"],
        world=task["world"],
        master_addr="127.0.0.1",
        master_port=task["master_port"],
        timeout_s=task["timeout_s"],
        heads=model.pipe.transformer.config.num_attention_heads,
        cfg_parallel=True,
    )
    report["join_s"] = round(time.perf_counter() - started, 2)
    report["group"] = group.describe()
    try:
        started = time.perf_counter()
        # Compiles the blocks, then splits them over the guidance half (group.enable_context_parallel).
        runtime = ParallelRuntime(model.pipe, model.speed, group)
        prepare_vae(model.pipe.vae, model.speed)
        for setting in task["settings"]:  # compile and first runs of each shape, 2 steps
            p = model.params(setting, steps=task["warmup_steps"])
            denoise_parallel(runtime, group, p, emb, model.guard(p.num_inference_steps), knobs=EXACT)
        report["compile_and_warmup_s"] = round(time.perf_counter() - started, 2)
        for setting in task["settings"]:
            out = report["settings"][setting] = {}
            reason = model.skip_reason(job, setting)
            # Every rank takes the same branch, or the others would wait in a collective.
            if group.any_rank(reason is not None):
                out["skipped"] = reason or "skipped: another rank's budget check"
                continue
            frames = decode_parallel(model.pipe, model.random_latents(setting), group)  # the VAE's first run
            if rank0:
                out["warm_frames"] = save_frames(task, setting, frames)
            del frames
            if model.cuda:
                model.torch.cuda.reset_peak_memory_stats()
            p = model.params(setting)
            group.barrier()  # every rank starts the clock together
            latents, seconds = model.timed(
                lambda p=p: denoise_parallel(runtime, group, p, emb, model.guard(p.num_inference_steps), knobs=EXACT)
            )
            out.update(time_s=round(seconds, 3), peak_gib=model.peak_gib())
            if rank0:
                out["latents"] = save_latents(task, setting, latents)
            group.barrier()
            _, decode_s = model.timed(lambda: decode_parallel(model.pipe, latents, group))
            out["decode_s"] = round(decode_s, 3)
            log(task, f"{setting}: denoise {out['time_s']} s, decode {out['decode_s']} s")
    finally:
        group.close()
