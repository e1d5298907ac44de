"""What the serving layer costs: HTTP end to end vs the same stages in-process.

    python bench/bench_overhead.py --profile wan2.2-ti2v-5b-random --runs 5     # on a GPU

One run measures both, on the same card:
  in-process  the three stages (encode_prompts -> denoise -> decode_latents ->
              encode_mp4) called directly, one after another, in this process;
  HTTP        POST /v1/videos against the Ray Serve app (Gateway ->
              PromptEncoder -> Denoiser -> VideoEncoder with fractional GPUs
              0.2 / 0.5 / 0.3 of one card), same preset, seed and weights.
Prints both medians, the ratio and the added milliseconds with the card's
name; writes bench/results/overhead-<card>.json. Goal: the serving layer adds
under 5% (or under 30 ms).
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, summary, write_result  # noqa: E402
from serve_app.config import ServiceArgs, load_model_profile, load_presets  # noqa: E402
from serve_app.deadline import Deadline, StepGuard  # noqa: E402
from serve_app.params import resolve_generation  # noqa: E402


def measure_in_process(profile_name: str, params, runs: int, data_dir: Path) -> tuple[list[float], dict]:
    """Median-of-runs wall time of the stages called in turn, and a per-stage breakdown."""
    import statistics

    import torch

    from serve_app.pipeline import stages
    from serve_app.pipeline.loading import load_pipeline
    from serve_app.video import encode_mp4, frames_to_uint8

    profile = load_model_profile(profile_name)
    pipes = {s: load_pipeline(profile, data_dir, s) for s in ("prompt_encoder", "denoiser", "video_encoder")}

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        emb = stages.encode_prompts(
            pipes["prompt_encoder"], params.prompt, params.negative_prompt, params.guidance_scale,
            profile.max_sequence_length,
        )
        t1 = time.perf_counter()
        guard = StepGuard(Deadline.after(3600), params.num_inference_steps)
        latents = stages.denoise(pipes["denoiser"], params, emb, guard, max_sequence_length=profile.max_sequence_length)
        t2 = time.perf_counter()
        frames = frames_to_uint8(stages.decode_latents(pipes["video_encoder"], latents))
        t3 = time.perf_counter()
        encode_mp4(frames, params.fps)
        t4 = time.perf_counter()
        return {"prompt_encode_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2, "encode_s": t4 - t3,
                "total_s": t4 - t0}

    once()  # warm-up: kernels, allocator
    runs_ = [once() for _ in range(runs)]
    del pipes
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    breakdown = {k: round(statistics.median(r[k] for r in runs_), 4) for k in runs_[0]}
    return [r["total_s"] for r in runs_], breakdown


GPU_FRACTIONS = {"prompt_encoder": 0.2, "denoiser": 0.5, "video_encoder": 0.3}


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


def measure_http(
    profile_name: str, params, runs: int, data_dir: Path, gpu: bool, progress_interval_s: float
) -> tuple[list[float], list[dict]]:
    import ray
    from ray import serve

    from serve_app.app import build_app

    fractions = GPU_FRACTIONS if gpu else {}
    # One CPU each on a GPU host; none on a small CPU machine, where four
    # replicas asking for a core each would never be scheduled on two cores.
    cpus = 1 if gpu else 0
    stages = {
        "gateway": {"max_ongoing_requests": 64, "num_cpus": cpus},
        "prompt_encoder": {"max_ongoing_requests": 4, "num_cpus": cpus, "num_gpus": fractions.get("prompt_encoder", 0)},
        "denoiser": {"max_ongoing_requests": 1, "num_cpus": cpus, "num_gpus": fractions.get("denoiser", 0)},
        "video_encoder": {"max_ongoing_requests": 2, "num_cpus": cpus, "num_gpus": fractions.get("video_encoder", 0)},
    }
    args = ServiceArgs(
        model=profile_name,
        data_dir=str(data_dir),
        default_deadline_s=600,
        progress_interval_s=progress_interval_s,
        stages=stages,
    )
    port = _free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="video", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1/videos"
        body = {
            "prompt": params.prompt,
            "preset": params.preset,
            "seed": params.seed,
        }
        _post(url, body)  # warm-up through the whole path
        samples, answers = [], []
        for _ in range(runs):
            started = time.perf_counter()
            answers.append(_post(url, body))
            samples.append(time.perf_counter() - started)
        return samples, answers
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data-dir", default="data/bench")
    args = parser.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    params = resolve_generation(
        {"prompt": "a red fox running through fresh snow, golden hour", "preset": args.preset, "seed": 1234},
        load_presets(),
    )
    data_dir = Path(args.data_dir).resolve()
    card = card_name()
    print(f"card: {card}; profile {args.profile}; preset {args.preset} ({params.size}, "
          f"{params.num_frames} frames, {params.num_inference_steps} steps)", flush=True)

    direct, direct_breakdown = measure_in_process(args.profile, params, args.runs, data_dir)
    print(f"in-process: {[round(x, 4) for x in direct]} {direct_breakdown}", flush=True)
    variants = {}
    # Every step streamed to the gateway (the default), and no step messages
    # at all, to show what per-step progress costs.
    for name, interval in (("progress every step", 0.0), ("no progress messages", 3600.0)):
        samples, answers = measure_http(args.profile, params, args.runs, data_dir, gpu, interval)
        print(f"http ({name}): {[round(x, 4) for x in samples]} {answers[-1].get('timings')}", flush=True)
        variants[name] = {"s": summary(samples), "stage_timings_last": answers[-1].get("timings")}

    d = summary(direct)
    h = variants["progress every step"]["s"]
    added_ms = (h["median"] - d["median"]) * 1000
    ratio = h["median"] / d["median"]
    met = ratio < 1.05 or added_ms < 30
    result = {
        "profile": args.profile,
        "preset": args.preset,
        "params": params.model_dump(),
        "in_process_s": d,
        "in_process_breakdown_median": direct_breakdown,
        "http": variants,
        "ratio_http_over_in_process": ratio,
        "added_ms": added_ms,
        "goal": "HTTP adds < 5% or < 30 ms",
        "goal_met": met,
        "fractions": GPU_FRACTIONS if gpu else None,
        "torch": torch.__version__,
    }
    path = write_result(f"overhead-{slug(card)}-{args.profile}-{args.preset}", result)
    print()
    print("| card | path | median s | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| {card} | in-process stages | {d['median']:.4f} | 1.000 |")
    for name, v in variants.items():
        print(f"| {card} | HTTP via Ray Serve, {name} | {v['s']['median']:.4f} | {v['s']['median'] / d['median']:.3f} |")
    print(f"serving layer adds {added_ms:.1f} ms ({(ratio - 1) * 100:.1f}%): goal {'met' if met else 'NOT met'}; "
          f"wrote {path}")


if __name__ == "__main__":
    main()
