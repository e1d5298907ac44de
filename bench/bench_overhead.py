"""What the serving layer costs: HTTP end to end vs the same stages in-process.

    python bench/bench_overhead.py --profile wan2.2-ti2v-5b-random --runs 10     # on a GPU

One run measures both, on the same card, interleaved (A, B, A, B, ...) so that
clock and thermal drift hit both alike:
  in-process  the three stages (encode_prompts -> denoise -> decode_latents ->
              encode_mp4) called directly, one after another, in this process;
  HTTP        POST /v1/videos against the Ray Serve app (Gateway ->
              PromptEncoder -> Denoiser -> VideoEncoder with fractional GPUs
              0.2 / 0.5 / 0.3 of one card), same preset, seed and weights,
              progress streamed every step.
Both copies of the model stay resident (about 2 x 23 GB on an 80 GB card).
Each --variants entry restarts the app with other replica settings (CPUs per
stage, progress message interval). Prints medians, the ratio and the added
milliseconds per variant with the card's name; writes bench/results/overhead-<card>-<profile>-<preset>.json.
Goal: the serving layer adds under 5% (or under 30 ms).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, summary, write_result
from serve_app.config import ServiceArgs, load_model_profile, load_presets
from serve_app.deadline import Deadline, StepGuard
from serve_app.params import resolve_generation

GPU_FRACTIONS = {"prompt_encoder": 0.2, "denoiser": 0.5, "video_encoder": 0.3}


class InProcessStages:
    """The three stages in this process, called in turn."""

    def __init__(self, profile_name: str, data_dir: Path) -> None:
        from serve_app.pipeline.loading import load_pipeline

        self.profile = load_model_profile(profile_name)
        self.pipes = {
            s: load_pipeline(self.profile, data_dir, s) for s in ("prompt_encoder", "denoiser", "video_encoder")
        }

    def run(self, params) -> dict[str, float]:
        from serve_app.pipeline import stages
        from serve_app.video import encode_mp4, frames_to_uint8

        t0 = time.perf_counter()
        emb = stages.encode_prompts(
            self.pipes["prompt_encoder"],
            params.prompt,
            params.negative_prompt,
            params.guidance_scale,
            self.profile.max_sequence_length,
        )
        t1 = time.perf_counter()
        guard = StepGuard(Deadline.after(3600), params.num_inference_steps)
        latents = stages.denoise(
            self.pipes["denoiser"], params, emb, guard, max_sequence_length=self.profile.max_sequence_length
        )
        t2 = time.perf_counter()
        frames = frames_to_uint8(stages.decode_latents(self.pipes["video_encoder"], latents))
        t3 = time.perf_counter()
        encode_mp4(frames, params.fps)
        t4 = time.perf_counter()
        return {
            "prompt_encode_s": t1 - t0,
            "denoise_s": t2 - t1,
            "decode_s": t3 - t2,
            "encode_s": t4 - t3,
            "total_s": t4 - t0,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url} -> {exc.code}: {exc.read().decode(errors='replace')}") from None


def start_app(profile_name: str, data_dir: Path, gpu: bool, cpus_per_stage: float, progress_interval_s: float) -> str:
    import ray
    from ray import serve

    from serve_app.app import build_app

    fractions = GPU_FRACTIONS if gpu else {}
    # None on a small CPU machine, where four replicas asking for a core each
    # would never be scheduled on two cores. Ray sets OMP_NUM_THREADS (so
    # torch's CPU threads) to a replica's num_cpus.
    cpus = cpus_per_stage if gpu else 0
    stages = {
        "gateway": {"max_ongoing_requests": 64, "num_cpus": cpus},
        **{
            name: {"max_ongoing_requests": mor, "num_cpus": cpus, "num_gpus": fractions.get(name, 0)}
            for name, mor in (("prompt_encoder", 4), ("denoiser", 1), ("video_encoder", 2))
        },
    }
    args = ServiceArgs(
        model=profile_name,
        data_dir=str(data_dir),
        default_deadline_s=600,
        progress_interval_s=progress_interval_s,
        stages=stages,
    )
    port = _free_port()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="video", route_prefix="/")
    return f"http://127.0.0.1:{port}/v1/videos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument(
        "--variants",
        type=_variant,
        nargs="+",
        default=[(1.0, 0.0)],
        help="serving variants CPUS:PROGRESS_INTERVAL_S (CPUs per stage replica; 0 = progress every step)",
    )
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    gpu = torch.cuda.is_available()
    body = {"prompt": "a red fox running through fresh snow, golden hour", "preset": args.preset, "seed": 1234}
    params = resolve_generation(body, load_presets())
    data_dir = Path(args.data_dir).resolve()
    card = card_name()
    print(
        f"card: {card}; profile {args.profile}; preset {args.preset} ({params.size}, "
        f"{params.num_frames} frames, {params.num_inference_steps} steps)",
        flush=True,
    )

    direct = InProcessStages(args.profile, data_dir)
    direct.run(params)  # warm-up: kernels, allocators
    variants: dict[str, dict] = {}
    in_process_all: list[dict] = []
    try:
        for cpus, interval in args.variants:
            name = f"num_cpus={cpus:g} per stage, progress every {'step' if interval == 0 else f'{interval:g}s'}"
            url = start_app(args.profile, data_dir, gpu, cpus, interval)
            _post(url, body)  # warm-up through the whole path
            in_process, http = [], []
            for _ in range(args.runs):
                in_process.append(direct.run(params))
                started = time.perf_counter()
                answer = _post(url, body)
                http.append({**answer["timings"], "client_s": time.perf_counter() - started})
            serve.shutdown()
            in_process_all += in_process
            d = summary([r["total_s"] for r in in_process])
            h = summary([r["client_s"] for r in http])
            variants[name] = {
                "in_process_s": d,
                "http_s": h,
                "ratio": h["median"] / d["median"],
                "added_ms": (h["median"] - d["median"]) * 1000,
                "in_process_stage_medians": _medians(in_process),
                "http_stage_medians": _medians(http),
            }
            print(f"{name}: in-process {[round(r['total_s'], 3) for r in in_process]}", flush=True)
            print(f"{name}: http       {[round(r['client_s'], 3) for r in http]}", flush=True)
            print(f"  stage medians in-process {_medians(in_process)}", flush=True)
            print(f"  stage medians http       {_medians(http)}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    best_name = min(variants, key=lambda n: variants[n]["ratio"])
    best = variants[best_name]
    met = best["ratio"] < 1.05 or best["added_ms"] < 30
    result = {
        "profile": args.profile,
        "preset": args.preset,
        "params": params.model_dump(),
        "runs_interleaved_per_variant": args.runs,
        "variants": variants,
        "default_config_variant": next(iter(variants)),
        "goal": "HTTP adds < 5% or < 30 ms",
        "goal_met_by": best_name if met else None,
        "fractions": GPU_FRACTIONS if gpu else None,
        "torch": torch.__version__,
    }
    path = write_result(f"overhead-{slug(card)}-{args.profile}-{args.preset}", result)
    print()
    print("| card | serving variant | in-process median s | HTTP median s | ratio | added ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, v in variants.items():
        print(
            f"| {card} | {name} | {v['in_process_s']['median']:.4f} | {v['http_s']['median']:.4f} | "
            f"{v['ratio']:.3f} | {v['added_ms']:.1f} |"
        )
    print(f"goal (< 5% or < 30 ms): {'met by ' + best_name if met else 'NOT met'}; wrote {path}")


def _medians(runs: list[dict]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def _variant(text: str) -> tuple[float, float]:
    """'CPUS:PROGRESS_INTERVAL_S', e.g. '1:0' or '4:3600'."""
    cpus, interval = text.split(":")
    return float(cpus), float(interval)


if __name__ == "__main__":
    main()
