"""The denoiser spread over two cards: capacity with one denoiser replica vs two, same host, same run.

    python bench/bench_spread.py --config configs/serve_gpu_2x.yaml     # a host with two GPUs

1. Deploys the config with the denoiser's autoscaling capped at one replica and
   measures capacity (videos per second at full quality, closed loop).
2. Redeploys with the cap at two (Ray Serve restarts the replicas: the caps
   live in the app's args) and keeps enough requests in flight for the
   queue-depth policy to add the second replica; once it runs, measures
   capacity again.
3. Prints which card each model replica's process is on (NVML's compute
   processes, matched to Ray's actor pids) and the capacity ratio.

Writes bench/results/spread-<card>-<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_load import REQUESTS, app_args, closed_loop_capacity
from bench.common import card_name, free_port, slug, write_result


def with_denoiser_max(args, max_replicas: int):
    stages = args.stages.model_dump()
    stages["denoiser"]["autoscaling"]["max_replicas"] = max_replicas
    return args.model_copy(update={"stages": type(args.stages).model_validate(stages)})


def running_denoisers() -> int:
    from ray import serve

    states = serve.status().applications["video"].deployments["Denoiser"].replica_states
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def replicas_by_card() -> list[dict]:
    """Each process holding GPU memory, named by Ray's process title
    (`ray::ServeReplica:<app>:<deployment>`): deployment, pid, card, MiB."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no GPU here (a CPU smoke run)
    rows = []
    for card in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(card)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            try:
                title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                title = ""
            marker = "ServeReplica:video:"
            name = title.split(marker, 1)[1].split()[0].split(".")[0] if marker in title else f"? {title[:60]}"
            rows.append(
                {"deployment": name, "pid": proc.pid, "card": card, "used_mib": (proc.usedGpuMemory or 0) // 2**20}
            )
    return sorted(rows, key=lambda r: (r["deployment"], r["card"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/serve_gpu_2x.yaml")
    parser.add_argument("--jobs", type=int, default=12, help="videos each capacity run completes")
    parser.add_argument(
        "--warmup-presets",
        nargs="*",
        default=["preview"],
        help="presets the model replicas warm up for (fewer: faster start)",
    )
    opts = parser.parse_args()

    import ray
    from ray import serve

    args = app_args(opts.config, tempfile.mkdtemp(prefix="bench-spread-"), {})
    # model_overrides replace whole profile fields: keep the profile's speed, fewer warm-ups.
    speed = {**args.model_profile().speed.model_dump(), "warmup_presets": opts.warmup_presets}
    args = args.model_copy(update={"model_overrides": {**args.model_overrides, "speed": speed}})
    model = args.model_profile()
    body = REQUESTS["tiny" if model.source == "tiny" else "5b"]
    port = free_port()
    # Autoscaling reacts in about a second instead of Ray's default 10 s reports.
    env = {
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    }
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_url = f"http://127.0.0.1:{port}"
    from serve_app.app import build_app

    try:
        serve.run(build_app(with_denoiser_max(args, 1)), name="video", route_prefix="/")
        asyncio.run(closed_loop_capacity(base_url, body, 1, 2, 600))  # warm the estimator and caches
        one = asyncio.run(closed_loop_capacity(base_url, body, 2, opts.jobs, 600))
        print(f"one denoiser: {one:.3f} videos/s", flush=True)
        placement_one = replicas_by_card()

        serve.run(build_app(with_denoiser_max(args, 2)), name="video", route_prefix="/")
        started = time.monotonic()

        async def load_until_two():
            task = asyncio.ensure_future(closed_loop_capacity(base_url, body, 4, 10**6, 600))
            while running_denoisers() < 2:
                if time.monotonic() - started > 300:
                    raise RuntimeError("the second denoiser replica never started")
                await asyncio.sleep(1)
            task.cancel()

        asyncio.run(load_until_two())
        scale_up_s = time.monotonic() - started
        print(f"second denoiser running after {scale_up_s:.0f} s under load", flush=True)
        two = asyncio.run(closed_loop_capacity(base_url, body, 4, opts.jobs, 600))
        placement_two = replicas_by_card()
    finally:
        serve.shutdown()
        ray.shutdown()

    ratio = two / one
    path = write_result(
        f"spread-{slug(card_name())}-{model.name}",
        {
            "model": model.name,
            "request": body,
            "capacity_one_denoiser_per_s": one,
            "capacity_two_denoisers_per_s": two,
            "ratio": ratio,
            "scale_up_s": scale_up_s,
            "placement_one": placement_one,
            "placement_two": placement_two,
        },
    )
    print(f"\nSpread: {card_name()} x2, model {model.name}, request {body}")
    print(f"{'deployment':<16} {'card':>4} {'MiB':>7}")
    for row in placement_two:
        print(f"{row['deployment']:<16} {row['card']:>4} {row['used_mib']:>7}")
    denoiser_cards = sorted(r["card"] for r in placement_two if r["deployment"] == "Denoiser")
    print(f"denoiser replicas on cards {denoiser_cards}")
    print(f"capacity: one denoiser {one:.3f}/s, two {two:.3f}/s, ratio {ratio:.2f} (goal: near 2)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
