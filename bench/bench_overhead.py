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
Prints medians and minima, the ratio and the added milliseconds with the
card's name; writes bench/results/overhead-<card>-<profile>-<preset>.json.
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

from bench.common import card_name, slug, summary, write_result  # noqa: E402
from serve_app.config import ServiceArgs, load_model_profile, load_presets  # noqa: E402
from serve_app.deadline import Deadline, StepGuard  # noqa: E402
from serve_app.params import resolve_generation  # noqa: E402

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
            self.pipes["prompt_encoder"], params.prompt, params.negative_prompt, params.guidance_scale,
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
        return {"prompt_encode_s": t1 - t0, "denoise_s": t2 - t1, "decode_s": t3 - t2, "encode_s": t4 - t3,
                "total_s": t4 - t0}


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


def start_app(profile_name: str, data_dir: Path, gpu: bool) -> str:
    import ray
    from ray import serve

    from serve_app.app import build_app

    fractions = GPU_FRACTIONS if gpu else {}
    # One CPU each on a GPU host; none on a small CPU machine, where four
    # replicas asking for a core each would never be scheduled on two cores.
    cpus = 1 if gpu else 0
    stages = {
        "gateway": {"max_ongoing_requests": 64, "num_cpus": cpus},
        **{
            name: {"max_ongoing_requests": mor, "num_cpus": cpus, "num_gpus": fractions.get(name, 0)}
            for name, mor in (("prompt_encoder", 4), ("denoiser", 1), ("video_encoder", 2))
        },
    }
    args = ServiceArgs(model=profile_name, data_dir=str(data_dir), default_deadline_s=600, stages=stages)
    port = _free_port()
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
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    gpu = torch.cuda.is_available()
    body = {"prompt": "a red fox running through fresh snow, golden hour", "preset": args.preset, "seed": 1234}
    params = resolve_generation(body, load_presets())
    data_dir = Path(args.data_dir).resolve()
    card = card_name()
    print(f"card: {card}; profile {args.profile}; preset {args.preset} ({params.size}, "
          f"{params.num_frames} frames, {params.num_inference_steps} steps)", flush=True)

    direct = InProcessStages(args.profile, data_dir)
    url = start_app(args.profile, data_dir, gpu)
    try:
        direct.run(params), _post(url, body)  # warm-up: kernels, allocators, the whole HTTP path
        in_process, http = [], []
        for _ in range(args.runs):
            in_process.append(direct.run(params))
            started = time.perf_counter()
            answer = _post(url, body)
            http.append({**answer["timings"], "client_s": time.perf_counter() - started})
    finally:
        serve.shutdown()
        ray.shutdown()

    d = summary([r["total_s"] for r in in_process])
    h = summary([r["client_s"] for r in http])
    breakdown_in = {k: round(statistics.median(r[k] for r in in_process), 4) for k in in_process[0]}
    breakdown_http = {k: round(statistics.median(r[k] for r in http), 4) for k in http[0]}
    print(f"in-process runs: {[round(r['total_s'], 4) for r in in_process]}")
    print(f"http runs:       {[round(r['client_s'], 4) for r in http]}")
    print(f"median stage times in-process: {breakdown_in}")
    print(f"median stage times http:       {breakdown_http}")

    added_ms = (h["median"] - d["median"]) * 1000
    ratio = h["median"] / d["median"]
    met = ratio < 1.05 or added_ms < 30
    result = {
        "profile": args.profile,
        "preset": args.preset,
        "params": params.model_dump(),
        "runs_interleaved": args.runs,
        "in_process_s": d,
        "http_s": h,
        "in_process_stage_medians": breakdown_in,
        "http_stage_medians": breakdown_http,
        "ratio_http_over_in_process": ratio,
        "added_ms": added_ms,
        "added_ms_of_minima": (h["min"] - d["min"]) * 1000,
        "goal": "HTTP adds < 5% or < 30 ms",
        "goal_met": met,
        "fractions": GPU_FRACTIONS if gpu else None,
        "torch": torch.__version__,
    }
    path = write_result(f"overhead-{slug(card)}-{args.profile}-{args.preset}", result)
    print()
    print("| card | path | median s | min s | ratio (medians) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {card} | in-process stages | {d['median']:.4f} | {d['min']:.4f} | 1.000 |")
    print(f"| {card} | HTTP via Ray Serve | {h['median']:.4f} | {h['min']:.4f} | {ratio:.3f} |")
    print(f"serving layer adds {added_ms:.1f} ms ({(ratio - 1) * 100:.1f}%; minima: "
          f"{result['added_ms_of_minima']:.1f} ms): goal {'met' if met else 'NOT met'}; wrote {path}")


if __name__ == "__main__":
    main()
