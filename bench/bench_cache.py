"""The result cache under a Zipf-distributed prompt workload, over HTTP (tiny model, CPU).

    python bench/bench_cache.py --requests 300 --prompts 60

Starts the app (Ray Serve, tiny model) in this process, then sends the same
request sequence twice, one request at a time on one keep-alive connection
(as SDK clients hold one):
  cached    as clients send it (the cache on, the default)
  baseline  the same requests with `cache: false` (every one generates)
A few prompts are asked for all day ("happy birthday"): prompt i is drawn
with probability proportional to 1 / i^s (Zipf, s = 1.1 by default).
Prints the hit ratio, p50/p99 of hits and misses, the hit/miss latency ratio
and the whole workload's time against the baseline; writes
bench/results/cache-<card>.json. Goal: a hit's p50 under 10 ms through the
full HTTP path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, free_port, slug, write_result

REQUEST = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 4, "fps": 8}


def zipf_prompts(n_requests: int, n_prompts: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i**s) for i in range(1, n_prompts + 1)]
    return [f"prompt number {i}: a festive scene" for i in rng.choices(range(n_prompts), weights, k=n_requests)]


def percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Client:
    """One keep-alive HTTP/1.1 connection, as SDK clients (httpx, requests sessions) hold one."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[float, dict, dict]:
        # Prefer: wait: every answer is the finished video (or a cached one), never a
        # 202 that would leave a job running behind the next request.
        headers = {"content-type": "application/json", "prefer": "wait=120"}
        payload = None if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        self.conn.request(method, path, payload, headers)
        response = self.conn.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        if response.status >= 400:
            raise RuntimeError(f"HTTP {response.status}: {raw.decode(errors='replace')}")
        return elapsed, json.loads(raw), server_timing(response.getheader("server-timing", ""))

    def close(self) -> None:
        self.conn.close()


def server_timing(header: str) -> dict[str, float]:
    """'body;dur=2.1, gateway;dur=3.0' -> {'body': 2.1, 'gateway': 3.0} (ms)."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, rest = part.partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out


def run(client: Client, prompts: list[str], cache: bool) -> list[tuple[float, bool, dict]]:
    out = []
    for prompt in prompts:
        elapsed, answer, timing = client.request("POST", "/v1/videos", {"prompt": prompt, "cache": cache, **REQUEST})
        out.append((elapsed, bool(answer.get("cached")), timing))
    return out


def floor_ms(client: Client, n: int) -> list[float]:
    """Ray Serve's own floor here: a GET that does no work in the gateway."""
    return [client.request("GET", "/v1/presets")[0] * 1000 for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import ServiceArgs

    port = free_port()
    prompts = zipf_prompts(args.requests, args.prompts, args.zipf, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as data_dir:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(ServiceArgs(data_dir=data_dir)), name="video", route_prefix="/")
            client = Client(f"http://127.0.0.1:{port}")
            client.request("POST", "/v1/videos", {"prompt": "warm up", "cache": False, **REQUEST})
            floor = floor_ms(client, 50)
            t0 = time.perf_counter()
            baseline = run(client, prompts, cache=False)
            t1 = time.perf_counter()
            cached = run(client, prompts, cache=True)
            t2 = time.perf_counter()
            floor += floor_ms(client, 50)
            client.close()
        finally:
            serve.shutdown()
            ray.shutdown()

    hits = [t for t, hit, _ in cached if hit]
    misses = [t for t, hit, _ in cached if not hit]
    base = [t for t, _, _ in baseline]
    # Where a hit's time goes, from the gateway's Server-Timing header.
    hit_body = [timing.get("body", 0.0) for _, hit, timing in cached if hit]
    hit_gateway = [timing.get("gateway", 0.0) for _, hit, timing in cached if hit]
    hit_p50, miss_p50 = statistics.median(hits), statistics.median(misses)
    result = {
        "workload": {
            "requests": args.requests,
            "distinct_prompts": args.prompts,
            "zipf_s": args.zipf,
            "distinct_asked": len(set(prompts)),
            "request": REQUEST,
        },
        "hit_ratio": len(hits) / len(cached),
        "hit_ms": {"p50": hit_p50 * 1000, "p99": percentile(hits, 99) * 1000, "n": len(hits)},
        "miss_ms": {"p50": miss_p50 * 1000, "p99": percentile(misses, 99) * 1000, "n": len(misses)},
        "baseline_ms": {"p50": statistics.median(base) * 1000, "p99": percentile(base, 99) * 1000},
        "hit_over_miss_p50": hit_p50 / miss_p50,
        "hit_breakdown_p50_ms": {
            "serve_floor_get": statistics.median(floor),
            "gateway_reading_body": statistics.median(hit_body),
            "gateway_total": statistics.median(hit_gateway),
        },
        "client": "one keep-alive HTTP/1.1 connection (http.client)",
        "workload_s": {"cached": t2 - t1, "baseline_no_cache": t1 - t0},
        "workload_speedup": (t1 - t0) / (t2 - t1),
        "goal": "hit p50 < 10 ms through the full HTTP path",
        "goal_met": hit_p50 * 1000 < 10,
    }
    path = write_result(f"cache-{slug(card_name())}", result)
    card = card_name()
    print("| card | what | p50 ms | p99 ms | n |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {card} | hit | {result['hit_ms']['p50']:.1f} | {result['hit_ms']['p99']:.1f} | {len(hits)} |")
    print(f"| {card} | miss | {result['miss_ms']['p50']:.1f} | {result['miss_ms']['p99']:.1f} | {len(misses)} |")
    print(
        f"| {card} | baseline (cache: false) | {result['baseline_ms']['p50']:.1f} | "
        f"{result['baseline_ms']['p99']:.1f} | {len(base)} |"
    )
    split = result["hit_breakdown_p50_ms"]
    print(
        f"| {card} | GET /v1/presets (Ray Serve's floor) | {split['serve_floor_get']:.1f} | "
        f"{percentile(floor, 99):.1f} | {len(floor)} |"
    )
    print(
        f"a hit's p50 inside the gateway: {split['gateway_total']:.2f} ms, of which reading the body from "
        f"the Serve proxy {split['gateway_reading_body']:.2f} ms"
    )
    print(
        f"hit ratio {result['hit_ratio']:.3f}; hit/miss p50 {result['hit_over_miss_p50']:.3f}; workload "
        f"{result['workload_s']['cached']:.1f} s vs {result['workload_s']['baseline_no_cache']:.1f} s without "
        f"the cache ({result['workload_speedup']:.2f}x); goal {'met' if result['goal_met'] else 'NOT met'}; "
        f"wrote {path}"
    )


if __name__ == "__main__":
    main()
