"""Soak with faults injected at random: every job must end in a correct terminal state.

    python bench/soak.py --jobs 80                      # tiny model, CPU, SQLite, local files
    python bench/soak.py --jobs 80 --production         # Redis + S3 + two gateways, all faulted

Starts Ray and the app (tiny model) in this process with:
- injected failures at random model-call numbers (`faults` config): GPU
  out-of-memory in the denoiser (-> one rerun at the lowest tier) and in the
  video encoder (-> tiled decode), CUDA errors, and plain exceptions;
- a chaos thread that `ray.kill`s a random denoiser or video-encoder replica
  every few seconds (-> the job runs again on a replacement), and with
  `--production` a gateway replica too (-> its jobs are taken over);
- with `--production`: jobs, cache and limits in Redis behind a proxy that
  blackholes it for `--blackhole-s` every `--blackhole-every` s (a partition:
  connections open, nothing answers), and videos in S3 (a moto server) behind
  a proxy that adds `--s3-latency-s` to every request;
- a request mix (bench/soak_jobs.py): synchronous and asynchronous, cancels at
  random and cancels racing completion, deadlines too short to finish, and
  synchronous requests the client hangs up on and then retries with the same
  Idempotency-Key.

Then it checks every job and counts `lost`, `duplicated_runs` and
`wrong_state` (bench/soak_jobs.py defines each), prints the counts of each
outcome and writes bench/results/soak-<card>-<setup>.json. Exit status 1 if any
of the three is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, free_port, slug, write_result
from bench.fault_proxy import FaultProxy
from bench.soak_jobs import ALLOWED_FAILURES, JobOutcome, duplicated, recheck, run_job

KILLABLE = ("Denoiser", "VideoEncoder")


def fault_plan(rng: random.Random, calls: int, rate: float) -> dict:
    """Random model-call numbers per stage and kind; each call gets at most one fault."""
    plan: dict[str, dict[str, list[int]]] = {"oom_on_calls": {}, "cuda_error_on_calls": {}, "fail_on_calls": {}}
    kinds = {
        "denoiser": ["oom_on_calls", "fail_on_calls", "cuda_error_on_calls"],
        "video_encoder": ["oom_on_calls", "fail_on_calls"],
    }
    for stage, stage_kinds in kinds.items():
        for number in range(1, calls + 1):
            if rng.random() < rate:
                plan[rng.choice(stage_kinds)].setdefault(stage, []).append(number)
    return plan


class Chaos(threading.Thread):
    """Kills a random replica of `deployments` every `every_s` seconds."""

    def __init__(self, every_s: float, rng: random.Random, deployments: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.every_s, self.rng, self.deployments = every_s, rng, deployments
        self.stop = threading.Event()
        self.kills: Counter[str] = Counter()

    def run(self) -> None:
        import ray

        prefixes = tuple(f"SERVE_REPLICA::video#{name}#" for name in self.deployments)
        while not self.stop.wait(self.every_s):
            replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefixes)]
            if not replicas:
                continue
            victim = self.rng.choice(replicas)
            try:
                ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
                self.kills[victim["name"].split("#")[1]] += 1
            except ValueError:
                pass


class Partitions(threading.Thread):
    """Blackholes `proxy` for `for_s` seconds every `every_s` seconds."""

    def __init__(self, proxy: FaultProxy, every_s: float, for_s: float) -> None:
        super().__init__(daemon=True)
        self.proxy, self.every_s, self.for_s = proxy, every_s, for_s
        self.stop = threading.Event()
        self.windows = 0

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.proxy.blackhole()
            self.windows += 1
            self.stop.wait(self.for_s)
            self.proxy.heal()


@contextlib.contextmanager
def production_backends(data_dir: str, s3_latency_s: float) -> Iterator[tuple[FaultProxy, dict]]:
    """Redis (jobs, cache index, rate limits) and S3 (videos) as a production gateway has them,
    each behind a FaultProxy; yields the Redis proxy and the ServiceArgs fields that use them."""
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.s3 import moto_endpoint, s3_client

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request

    redis_server = RedisServer(Path(data_dir) / "redis")
    redis_server.start()
    redis_proxy = FaultProxy("127.0.0.1", redis_server.port).start()
    with moto_endpoint() as endpoint:
        host, port = endpoint.rsplit("//", 1)[1].split(":")
        s3_proxy = FaultProxy(host, int(port)).start()
        s3_proxy.slow(s3_latency_s)
        s3_client(endpoint).create_bucket(Bucket="soak")
        # Ray's workers start from this process's environment: the app's S3 client reads these.
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_proxy.port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
        )
        redis_url = f"redis://127.0.0.1:{redis_proxy.port}/0"
        try:
            yield (
                redis_proxy,
                {
                    "job_store": redis_url,
                    "cache_store": redis_url,
                    "artifact_store": "s3://soak/videos",
                    "access": {"store": redis_url},
                },
            )
        finally:
            s3_proxy.stop()
            redis_proxy.stop()
            redis_server.stop()


def count(outcomes: list[JobOutcome]) -> dict:
    return {
        "lost": sum(o.lost for o in outcomes),
        "duplicated_runs": sum(duplicated(o) for o in outcomes),
        "wrong_state": sum(o.wrong_state for o in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.08, help="share of model calls given a fault")
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between replica kills")
    parser.add_argument("--production", action="store_true", help="Redis + S3 + two gateways, all faulted")
    parser.add_argument("--blackhole-every", type=float, default=25.0, help="seconds between Redis blackholes")
    parser.add_argument("--blackhole-s", type=float, default=4.0, help="how long each Redis blackhole lasts")
    parser.add_argument("--s3-latency-s", type=float, default=0.2, help="latency added to every S3 request")
    parser.add_argument("--seed", type=int, default=11)
    opts = parser.parse_args()

    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import ServiceArgs

    rng = random.Random(opts.seed)
    faults = {**fault_plan(rng, opts.jobs * 3, opts.fault_rate), "step_delay_s": 0.05}
    data_dir = tempfile.mkdtemp(prefix="soak-")
    backends = production_backends(data_dir, opts.s3_latency_s) if opts.production else contextlib.nullcontext()
    with backends as production:
        extra: dict = {}
        partitions = None
        if production is not None:
            redis_proxy, extra = production
            extra["stages"] = {"gateway": {"num_replicas": 2, "max_ongoing_requests": 64}}
            partitions = Partitions(redis_proxy, opts.blackhole_every, opts.blackhole_s)
        args = ServiceArgs(
            data_dir=data_dir,
            job_max_attempts=4,
            job_lease_s=3,
            dispatch_interval_s=0.5,
            faults=faults,
            **extra,
        )
        port = free_port()
        ray.init(include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        victims = KILLABLE + (("Gateway",) if production is not None else ())
        chaos = Chaos(opts.kill_every, random.Random(opts.seed + 1), victims)
        started = time.monotonic()
        try:
            serve.run(build_app(args), name="video", route_prefix="/")
            chaos.start()
            if partitions is not None:
                partitions.start()
            base_url = f"http://127.0.0.1:{port}"
            steps, frames = [4, 8, 12], [5, 9, 13]

            def one(n: int) -> JobOutcome:
                return run_job(base_url, n, random.Random(opts.seed * 1000 + n), steps, frames)

            with ThreadPoolExecutor(opts.concurrency) as pool:
                outcomes = list(pool.map(one, range(opts.jobs)))
            chaos.stop.set()
            if partitions is not None:
                partitions.stop.set()
                partitions.join()
            recheck(base_url, outcomes)
        finally:
            chaos.stop.set()
            serve.shutdown()
            ray.shutdown()
        elapsed = time.monotonic() - started
    report(opts, faults, chaos, partitions, outcomes, elapsed)


def report(opts, faults: dict, chaos: Chaos, partitions: Partitions | None, outcomes: list[JobOutcome], elapsed: float):
    totals = count(outcomes)
    outcome_counts = Counter(f"{o.status}:{o.code}" for o in outcomes)
    planned = {kind: sum(len(v) for v in plan.values()) for kind, plan in faults.items() if isinstance(plan, dict)}
    wrong = [o.summary() for o in outcomes if o.lost or o.wrong_state or duplicated(o)]
    setup = "production" if opts.production else "local"
    path = write_result(
        f"soak-{slug(card_name())}-tiny-{setup}",
        {
            "jobs": opts.jobs,
            "setup": setup,
            "elapsed_s": round(elapsed, 1),
            "faults_planned": planned,
            "replicas_killed": dict(chaos.kills),
            "redis_blackholes": None
            if partitions is None
            else {"windows": partitions.windows, "each_s": opts.blackhole_s},
            "s3_latency_s": opts.s3_latency_s if opts.production else None,
            **totals,
            # Retried 5xx answers and dropped connections (killed gateways, blackholed Redis):
            # not wrong, but what a client must be ready for under these faults.
            "transient_errors": sum(o.transient_errors for o in outcomes),
            "outcomes": dict(outcome_counts),
            "by_situation": {
                s: dict(Counter(f"{o.status}:{o.code}" for o in outcomes if o.situation == s)) for s in ALLOWED_FAILURES
            },
            "wrong": wrong,
            # Creates never accepted (over capacity or the store unreachable for the client's
            # whole patience, or a 4xx): correct answers under faults, listed to be read.
            "refused": [o.summary() for o in outcomes if o.status == "refused"],
            "all_correct": not wrong,
        },
    )
    print(
        f"\nSoak ({setup}): {opts.jobs} jobs in {elapsed:.0f} s on {card_name()}; faults planned {planned}; "
        f"replicas killed {dict(chaos.kills)}; Redis blackholes {0 if partitions is None else partitions.windows}"
    )
    print(f"{'outcome (status:code or tier)':<40} {'jobs':>5}")
    for outcome, n in sorted(outcome_counts.items()):
        print(f"{outcome:<40} {n:>5}")
    print(f"lost {totals['lost']}, duplicated_runs {totals['duplicated_runs']}, wrong_state {totals['wrong_state']}")
    print(f"transient errors retried by clients: {sum(o.transient_errors for o in outcomes)}")
    for w in wrong:
        print("  wrong:", w)
    print(f"wrote {path}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
