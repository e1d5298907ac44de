"""Open-loop load: admission and quality tiers against a naive FIFO, same graph, same arrivals.

    python bench/bench_load.py                                  # tiny model, CPU, serve_config.yaml
    python bench/bench_load.py --config configs/serve_gpu.yaml  # 5B random weights on a GPU

Starts Ray and the app in this process, then:
1. measures capacity: videos per second at full quality with the denoiser
   kept busy (closed loop, `replicas + 1` requests in flight);
2. for each load multiple (0.5x, 1x, 2x, 4x capacity) sends Poisson arrivals
   for `--duration` seconds; every request asks for its video within
   `--deadline` seconds (`deadline_s` and `Prefer: wait=`);
3. runs the same arrivals against two configurations of the same graph:
     project  admission control + quality tiers (the defaults)
     naive    `admission.enabled: false`: every request queued as asked, FIFO
   (redeployed in between; Ray Serve restarts every replica on an args change).

Per level and configuration it prints goodput (videos delivered within the
deadline per second of arrivals), p50/p99 latency of those videos, and the
mix of outcomes; then the ratio project/naive. Goal at 2x capacity: at least
99% of requests get a video in time or an immediate 429 (none waits past its
deadline), and goodput at least 1.5x naive. Writes bench/results/load-<card>-<model>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, free_port, slug, write_result

# A 429 answered within this long counts as "immediate".
IMMEDIATE_S = 1.0
# Per model: the request every arrival sends (its tiers lower steps and frames).
REQUESTS = {
    "tiny": {"width": 256, "height": 256, "num_frames": 17, "num_inference_steps": 25, "guidance_scale": 5.0},
    "5b": {"width": 640, "height": 480, "num_frames": 17, "num_inference_steps": 25, "guidance_scale": 5.0},
}


def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def deep_merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def app_args(config_path: str, data_dir: str, overrides: dict) -> Any:
    from serve_app.config import ServiceArgs
    from serve_app.serve_config import folded_args

    # The config's `deployments:` entries (resources, live settings) folded into the args:
    # serve.run(build_app(args)) below does not read them.
    app = yaml.safe_load(Path(config_path).read_text())["applications"][0]
    raw = folded_args(app).model_dump(mode="json")
    return ServiceArgs.model_validate(deep_merge(raw, {"data_dir": data_dir, "cache_enabled": False, **overrides}))


def classify(status: int, body: dict, latency: float, deadline_s: float) -> str:
    if status == 200 and body.get("status") == "completed":
        return "video" if latency <= deadline_s else "late_video"
    if status == 429:
        return "429_immediate" if latency <= IMMEDIATE_S else "429_slow"
    if status == 202:
        return "not_done_in_time"  # accepted, still running when the client's wait ended
    if status == 504:
        return "504_deadline"
    return f"http_{status}"


async def one_request(client, n: int, body: dict, deadline_s: float, sent_at: float) -> dict:
    started = time.perf_counter()
    try:
        response = await client.post(
            "/v1/videos",
            json={**body, "prompt": f"load test video {n}: a boat at dawn", "deadline_s": deadline_s},
            headers={"Prefer": f"wait={deadline_s:g}"},
            timeout=deadline_s + 30,
        )
        status, answer = response.status_code, response.json()
    except Exception as exc:  # noqa: BLE001 - a transport failure is an outcome too
        status, answer = 0, {"error": {"code": type(exc).__name__}}
    latency = time.perf_counter() - started
    return {
        "n": n,
        "sent_at": sent_at,
        "status": status,
        "latency_s": latency,
        "outcome": classify(status, answer, latency, deadline_s),
        "tier": answer.get("tier"),
    }


async def closed_loop_capacity(base_url: str, body: dict, in_flight: int, jobs: int, deadline_s: float) -> float:
    """Videos per second at full quality with `in_flight` requests always waiting."""
    import httpx

    done, lock = [], asyncio.Lock()
    counter = iter(range(10**9))

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def worker():
            while True:
                async with lock:
                    if len(done) >= jobs:
                        return
                    n = next(counter)
                result = await one_request(client, 10**6 + n, {**body, "quality": "exact"}, 600, 0)
                if result["status"] == 200:
                    done.append(time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    # Leave the first completions out: the pipeline fills before it flows.
    skip = min(in_flight, len(done) // 3)
    return (len(done) - skip) / (done[-1] - (done[skip - 1] if skip else started))


async def open_loop(base_url: str, body: dict, arrivals: list[float], deadline_s: float) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for n, at in enumerate(arrivals):
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_request(client, n, body, deadline_s, at)))
        return await asyncio.gather(*tasks)


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


def summarise(results: list[dict], duration_s: float) -> dict:
    outcomes = Counter(r["outcome"] for r in results)
    videos = [r["latency_s"] for r in results if r["outcome"] == "video"]
    total = len(results)
    return {
        "requests": total,
        "goodput_per_s": len(videos) / duration_s,
        "video_p50_s": percentile(videos, 50),
        "video_p99_s": percentile(videos, 99),
        "video_or_immediate_429": (outcomes["video"] + outcomes["429_immediate"]) / total if total else None,
        "outcomes": dict(outcomes),
        "tiers": dict(Counter(r["tier"] for r in results if r["outcome"] == "video")),
    }


def wait_idle(base_url: str, timeout_s: float = 300) -> None:
    """Until no unfinished job is left (so levels do not bleed into each other)."""
    import httpx

    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        load = httpx.get(f"{base_url}/healthz", timeout=30).json().get("load") or {}
        if load.get("unfinished_jobs", 0) == 0:
            return
        time.sleep(1)
    raise RuntimeError("the queue did not drain")


def deploy(args) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(args), name="video", route_prefix="/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_config.yaml", help="serve config whose first app's args to use")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per level")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds each request may take")
    parser.add_argument("--multiples", type=float, nargs="+", default=[0.5, 1, 2, 4])
    parser.add_argument("--capacity-jobs", type=int, default=12, help="videos the capacity run completes")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray's CPUs (default: all)")
    opts = parser.parse_args()

    import ray
    from ray import serve

    data_dir = tempfile.mkdtemp(prefix="bench-load-")
    project = app_args(opts.config, data_dir, {})
    naive = app_args(opts.config, data_dir, {"admission": {"enabled": False}})
    model = project.model_profile()
    body = REQUESTS["tiny" if model.source == "tiny" else "5b"]
    port = free_port()
    ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_url = f"http://127.0.0.1:{port}"
    try:
        deploy(project)
        replicas = project.stages.denoiser.max_replicas
        # Warm the estimator (and caches) with the shapes the tiers use.
        asyncio.run(closed_loop_capacity(base_url, body, 1, 2, opts.deadline))
        capacity = asyncio.run(closed_loop_capacity(base_url, body, replicas + 1, opts.capacity_jobs, opts.deadline))
        print(f"capacity at full quality: {capacity:.3f} videos/s ({card_name()}, {model.name})", flush=True)
        levels = []
        for configuration, args in (("project", project), ("naive", naive)):
            deploy(args)
            wait_idle(base_url)
            for multiple in opts.multiples:
                rate = multiple * capacity
                arrivals = poisson_arrivals(rate, opts.duration, opts.seed + int(multiple * 100))
                results = asyncio.run(open_loop(base_url, body, arrivals, opts.deadline))
                row = {
                    "configuration": configuration,
                    "multiple": multiple,
                    "rate_per_s": rate,
                    **summarise(results, opts.duration),
                }
                levels.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "tiers"}), flush=True)
                wait_idle(base_url)
    finally:
        serve.shutdown()
        ray.shutdown()

    table = []
    for multiple in opts.multiples:
        mine = next(r for r in levels if r["configuration"] == "project" and r["multiple"] == multiple)
        base = next(r for r in levels if r["configuration"] == "naive" and r["multiple"] == multiple)
        ratio = mine["goodput_per_s"] / base["goodput_per_s"] if base["goodput_per_s"] else float("inf")
        table.append({"multiple": multiple, "project": mine, "naive": base, "goodput_ratio": ratio})
    goal_row = next((t for t in table if t["multiple"] == 2), None)
    goals = None
    if goal_row is not None:
        goals = {
            "video_or_immediate_429_at_2x": goal_row["project"]["video_or_immediate_429"],
            "goodput_ratio_at_2x": goal_row["goodput_ratio"],
            "met": goal_row["project"]["video_or_immediate_429"] >= 0.99 and goal_row["goodput_ratio"] >= 1.5,
        }
    path = write_result(
        f"load-{slug(card_name())}-{model.name}",
        {
            "model": model.name,
            "request": body,
            "deadline_s": opts.deadline,
            "duration_s": opts.duration,
            "capacity_per_s": capacity,
            "denoiser_replicas": replicas,
            "levels": table,
            "goals": goals,
        },
    )

    print(
        f"\nLoad: {card_name()}, model {model.name}, capacity {capacity:.3f} videos/s, "
        f"deadline {opts.deadline:g} s, {opts.duration:g} s of Poisson arrivals per level"
    )
    print(
        f"{'load':>5} {'rate/s':>7} | {'goodput project':>15} {'naive':>7} {'ratio':>6} | "
        f"{'p50/p99 project':>16} {'naive':>13} | {'in time or fast 429':>19} | outcomes project / naive"
    )
    for t in table:
        mine, base = t["project"], t["naive"]

        def lat(r):
            return "-" if r["video_p50_s"] is None else f"{r['video_p50_s']:.1f}/{r['video_p99_s']:.1f}s"

        print(
            f"{t['multiple']:>4}x {mine['rate_per_s']:>7.3f} | {mine['goodput_per_s']:>15.3f} "
            f"{base['goodput_per_s']:>7.3f} {t['goodput_ratio']:>6.2f} | {lat(mine):>16} {lat(base):>13} | "
            f"{mine['video_or_immediate_429']:>9.1%} / {base['video_or_immediate_429']:>6.1%} | "
            f"{mine['outcomes']} / {base['outcomes']}"
        )
    if goals:
        print(
            f"goal at 2x: video-or-immediate-429 {goals['video_or_immediate_429_at_2x']:.1%} (>= 99%), "
            f"goodput ratio {goals['goodput_ratio_at_2x']:.2f} (>= 1.5): {'met' if goals['met'] else 'NOT met'}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
