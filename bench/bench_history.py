"""Job store calls with a long history behind them against an empty store (CPU, no Ray).

    python bench/bench_history.py                        # 100k finished jobs, SQLite and Redis
    python bench/bench_history.py --jobs 10000 --rounds 500 --backends sqlite

For each backend, two stores side by side: `empty`, and `full` holding --jobs
finished (completed) jobs of --keys API keys, ended within the last few minutes
(so their files, event logs and records are all kept: an expiry sweep finds
nothing due). Then --rounds rounds; each times every call below once on each
store, the two stores in alternating order, so whatever else loads the machine
weighs on both alike:

  create    a new queued job of key "bench" (POST /v1/videos)
  get       a random job: one of the 100k in `full`, one of the bench's own in
            `empty` (GET /v1/videos/{id}): the worst case, a cold record
  get_recent  one of the last 100 jobs the bench created, in both: what polls
            of running jobs read
  list      the newest page of 20 (GET /v1/videos, auth off or an admin key)
  list_key  the newest page of 20 of key "bench" (GET /v1/videos with auth on)
  sweep     an expiry sweep with nothing due (files, event logs, records)

Prints p50 and p99 per call per backend and the ratio full/empty of each;
writes bench/results/history-<card>.json with the command that made it.
Goal: every ratio <= 1.2. The p99 ratio is the median of the p99 ratios of
--blocks blocks of consecutive rounds (each also in the file, with the p99
ratio of all rounds pooled): on a shared machine a p99 of calls this short is
mostly the scheduler's, and one burst of other work spoils one block, not the
answer.

Filling goes through each store's own `create` (the same scripts and
statements, so the same indexes, as the service's), one job per call: SQLite
one transaction per job, Redis one script call per job, --fill-threads calls
in flight at once (redis-py's pool is thread-safe; its round trips overlap).
Redis runs as a private redis-server on a free port (tests/helpers/redis_server.py).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, write_result
from serve_app.artifacts import LocalArtifactStore
from serve_app.jobs.expiry import ExpirySweeper
from serve_app.jobs.model import JobRecord, JobStore
from serve_app.params import GenerationParams

OPS = ("create", "get", "get_recent", "list", "list_key", "sweep")
RECENT = 100
GOAL_RATIO = 1.2
PAGE = 20
BENCH_KEY = "bench"

# The clock of the run: finished jobs ended in the 300 s before it.
NOW = 1_800_000_000.0
PARAMS = GenerationParams(
    prompt="a red boat on a calm sea at dawn, cinematic",
    negative_prompt="",
    width=1280,
    height=704,
    num_frames=121,
    num_inference_steps=50,
    guidance_scale=5.0,
    fps=24,
    seed=7,
    preset="standard",
)


def new_id() -> str:
    return f"video_{uuid.uuid4().hex}"


def queued_job(created_at: float, key_id: str) -> JobRecord:
    return JobRecord.new(new_id(), "wan2.2-ti2v-5b", PARAMS, created_at, 600.0, key_id=key_id)


def finished_job(template: JobRecord, created_at: float, key_id: str) -> JobRecord:
    """A completed job like the service leaves one (cheap to make: copies of one template)."""
    ended = int(created_at) + 60
    video = template.video.model_copy(
        update={
            "id": new_id(),
            "created_at": int(created_at),
            "status": "completed",
            "progress": 100,
            "completed_at": ended,
            "expires_at": ended + 86400,
        }
    )
    return template.model_copy(update={"video": video, "created_at": created_at, "key_id": key_id})


def fill(store: JobStore, jobs: int, keys: int, threads: int) -> tuple[list[str], float]:
    """`jobs` finished jobs into `store` through its own create(); (their ids, seconds)."""
    template = queued_job(NOW, "k0")
    start_at = NOW - 360.0
    records = [finished_job(template, start_at + i * (300.0 / jobs), f"k{i % keys}") for i in range(jobs)]
    started = time.perf_counter()
    if threads <= 1:
        for job in records:
            store.create(job)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(store.create, records, chunksize=256):
                pass
    return [job.id for job in records], time.perf_counter() - started


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Side:
    """One store of a pair, and what its calls need."""

    def __init__(self, name: str, store: JobStore, get_ids: list[str], artifacts_dir: Path) -> None:
        self.name = name
        self.store = store
        self.get_ids = get_ids  # what `get` draws from (filled jobs; or, when empty, the bench's own)
        self.created = 0
        self.recent: list[str] = []  # the bench's own jobs, newest last
        self.sweeper = ExpirySweeper(store, LocalArtifactStore(artifacts_dir / name), clock=lambda: NOW)
        self.samples: dict[str, list[float]] = {op: [] for op in OPS}

    def run(self, op: str, rng: random.Random) -> None:
        if op == "create":
            job = queued_job(NOW + self.created * 1e-3, BENCH_KEY)
            self.created += 1
            started = time.perf_counter_ns()
            self.store.create(job)
            elapsed = time.perf_counter_ns() - started
            self.recent.append(job.id)
            if self.name == "empty":
                self.get_ids.append(job.id)
        else:
            call = {
                "get": lambda: self.store.get(rng.choice(self.get_ids)),
                "get_recent": lambda: self.store.get(rng.choice(self.recent[-RECENT:])),
                "list": lambda: self.store.list(None, PAGE, "desc"),
                "list_key": lambda: self.store.list(None, PAGE, "desc", key_id=BENCH_KEY),
                "sweep": self.sweeper.sweep,
            }[op]
            started = time.perf_counter_ns()
            call()
            elapsed = time.perf_counter_ns() - started
        self.samples[op].append(elapsed / 1000.0)


def measure(empty: Side, full: Side, rounds: int, blocks: int, seed: int) -> dict:
    rng = random.Random(seed)
    for side in (empty, full):  # warm up: caches, script loads, first connections
        for op in OPS:
            for _ in range(20):
                side.run(op, rng)
            side.samples[op].clear()
    # As timeit does: no cyclic-GC pauses inside the timed calls (they would land on
    # whichever side happened to allocate last).
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            pair = (empty, full) if i % 2 == 0 else (full, empty)
            for op in OPS:
                for side in pair:
                    side.run(op, rng)
    finally:
        gc.enable()
    report = {}
    per_block = rounds // blocks
    for op in OPS:
        row: dict = {}
        for side in (empty, full):
            samples = side.samples[op]
            row[side.name] = {"p50_us": round(percentile(samples, 50), 1), "p99_us": round(percentile(samples, 99), 1)}
        row["ratio_p50"] = round(row["full"]["p50_us"] / row["empty"]["p50_us"], 3)
        row["ratio_p99_pooled"] = round(row["full"]["p99_us"] / row["empty"]["p99_us"], 3)
        # The p99 ratio of each block of consecutive rounds, and their median: a burst of
        # other work on the machine spoils one block's p99, not the answer.
        block_ratios = []
        for b in range(blocks):
            window = slice(b * per_block, (b + 1) * per_block)
            block_ratios.append(
                round(percentile(full.samples[op][window], 99) / percentile(empty.samples[op][window], 99), 3)
            )
        row["ratio_p99_blocks"] = block_ratios
        row["ratio_p99"] = round(statistics.median(block_ratios), 3)
        report[op] = row
    return report


def bench_backend(name: str, open_store, args, tmp: Path) -> dict:
    empty_store, full_store = open_store("empty"), open_store("full")
    try:
        print(f"[{name}] filling {args.jobs} finished jobs ...", flush=True)
        ids, fill_s = fill(full_store, args.jobs, args.keys, args.fill_threads if name == "redis" else 1)
        print(f"[{name}] filled in {fill_s:.1f} s ({args.jobs / fill_s:.0f} jobs/s); measuring ...", flush=True)
        empty, full = Side("empty", empty_store, [], tmp), Side("full", full_store, ids, tmp)
        # `get` in `empty` and `get_recent` in both draw from the bench's own jobs: one to start with.
        for side in (empty, full):
            first = queued_job(NOW - 1.0, BENCH_KEY)
            side.store.create(first)
            side.recent.append(first.id)
        empty.get_ids.append(empty.recent[0])
        ops = measure(empty, full, args.rounds, args.blocks, args.seed)
        return {"fill_s": round(fill_s, 1), "fill_jobs_per_s": round(args.jobs / fill_s), "ops": ops}
    finally:
        empty_store.close()
        full_store.close()


def print_table(results: dict) -> None:
    print(
        f"\n{'backend':8} {'call':10} {'p50 empty':>10} {'p50 full':>9} {'ratio':>6}  "
        f"{'p99 empty':>10} {'p99 full':>9} {'ratio':>6} {'blocks':>7}   (microseconds; p99 ratio: "
        "all rounds pooled, and the median over blocks)"
    )
    for backend, result in results.items():
        for op, row in result["ops"].items():
            e, f = row["empty"], row["full"]
            print(
                f"{backend:8} {op:10} {e['p50_us']:10.1f} {f['p50_us']:9.1f} {row['ratio_p50']:6.2f}  "
                f"{e['p99_us']:10.1f} {f['p99_us']:9.1f} {row['ratio_p99_pooled']:6.2f} {row['ratio_p99']:7.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="finished jobs in the full store")
    parser.add_argument("--keys", type=int, default=100, help="API keys they belong to")
    parser.add_argument("--rounds", type=int, default=5000, help="timed calls per call kind per store")
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--fill-threads", type=int, default=1, help="Redis creates in flight while filling")
    parser.add_argument("--blocks", type=int, default=5, help="blocks of rounds the p99 ratio is the median over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    results: dict = {}
    versions = {"sqlite": sqlite3.sqlite_version}
    # p99s of calls this short are mostly the scheduler's: how busy the machine was says
    # how far to trust them (on 2 shared cores, a load of 10 puts a 4 ms tick into every
    # call that enters the kernel at a bad moment).
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp_name:
        tmp = Path(tmp_name)
        if "sqlite" in backends:
            from serve_app.jobs.sqlite_store import SQLiteJobStore

            results["sqlite"] = bench_backend("sqlite", lambda side: SQLiteJobStore(tmp / f"{side}.db"), args, tmp)
        if "redis" in backends:
            from serve_app.jobs.redis_store import RedisJobStore
            from tests.helpers.redis_server import RedisServer

            server = RedisServer(tmp / "redis")
            server.start()
            versions["redis"] = subprocess.run(
                [server.binary, "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            try:
                results["redis"] = bench_backend(
                    "redis", lambda side: RedisJobStore(server.url, prefix=f"bench-{side}"), args, tmp
                )
            finally:
                server.stop()

    print_table(results)
    worst = max(max(row["ratio_p50"], row["ratio_p99"]) for r in results.values() for row in r["ops"].values())
    over = [
        f"{backend} {op} {which} {row[which]:.2f}"
        for backend, r in results.items()
        for op, row in r["ops"].items()
        for which in ("ratio_p50", "ratio_p99")
        if row[which] > GOAL_RATIO
    ]
    goal_met = not over
    print(f"\nworst ratio full/empty: {worst:.2f} (goal <= {GOAL_RATIO}: {'met' if goal_met else 'NOT met'})")
    for line in over:
        print(f"  over the goal: {line}")
    if not args.no_write:
        path = write_result(
            f"history-{slug(card_name())}",
            {
                "jobs": args.jobs,
                "keys": args.keys,
                "rounds": args.rounds,
                "page": PAGE,
                "versions": versions,
                "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
                "cpus": os.cpu_count(),
                "fill": f"each store's own create(), one job per call; Redis with {args.fill_threads} calls in flight",
                "results": results,
                "worst_ratio": worst,
                "over_goal": over,
                "goal": f"every p50 ratio (pooled) and p99 ratio (median of {args.blocks} blocks) "
                f"full/empty <= {GOAL_RATIO}",
                "goal_met": goal_met,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
