"""Soak with faults injected at random: every job must end in a correct terminal state.

    python bench/soak.py --jobs 80          # tiny model, CPU

Starts Ray and the app (tiny model) in this process with:
- injected failures at random model-call numbers (`faults` config): GPU
  out-of-memory in the denoiser (-> one rerun at the lowest tier) and in the
  video encoder (-> tiled decode), CUDA errors, and plain exceptions;
- a chaos thread that `ray.kill`s a random denoiser or video-encoder replica
  every few seconds (-> the job runs again on a replacement);
- a request mix: synchronous and asynchronous, some cancelled while running,
  some with a deadline too short to finish.

Then it checks every job: it is terminal (none stuck), a completed one has a
playable mp4 of the size and frame count its answer reports, and a failed one
failed with a code its situation allows (`cancelled` only if it was
cancelled; `deadline_exceeded` only after its deadline really passed, as it
may when killed replicas keep a job waiting). Prints
the counts of each outcome and writes bench/results/soak-<card>-<model>.json.
Exit status 1 if any job ended wrong.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, free_port, slug, write_result

BASE = {"width": 64, "height": 64, "fps": 8, "cache": False}
# ServiceArgs' defaults: a synchronous request's deadline, and an asynchronous job's.
DEFAULT_SYNC_DEADLINE_S, DEFAULT_JOB_DEADLINE_S = 30.0, 600.0
# What a job may end as, given what was done to it (beyond "completed").
ALLOWED_FAILURES = {
    "plain": {"stage_failed", "stage_lost", "gpu_out_of_memory"},
    "cancelled": {"cancelled", "stage_failed", "stage_lost", "gpu_out_of_memory"},
    "short_deadline": {"deadline_exceeded", "stage_failed", "stage_lost", "gpu_out_of_memory"},
}


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
    """Kills a random denoiser or video-encoder replica every `every_s` seconds."""

    def __init__(self, every_s: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.every_s, self.rng = every_s, rng
        self.stop = threading.Event()
        self.kills: Counter[str] = Counter()

    def run(self) -> None:
        import ray

        while not self.stop.wait(self.every_s):
            replicas = [
                a
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(("SERVE_REPLICA::video#Denoiser#", "SERVE_REPLICA::video#VideoEncoder#"))
            ]
            if not replicas:
                continue
            victim = self.rng.choice(replicas)
            try:
                ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
                self.kills[victim["name"].split("#")[1]] += 1
            except ValueError:
                pass


def run_job(base_url: str, n: int, rng: random.Random) -> dict:
    import httpx

    situation = rng.choices(["plain", "cancelled", "short_deadline"], weights=[0.75, 0.15, 0.10])[0]
    body = {
        **BASE,
        "prompt": f"soak {n}",
        "num_frames": rng.choice([5, 9, 13]),
        "num_inference_steps": rng.choice([4, 8, 12]),
    }
    headers = {"Prefer": "respond-async"} if situation != "plain" or rng.random() < 0.5 else {}
    if situation == "short_deadline":
        body["deadline_s"] = 0.3
    with httpx.Client(base_url=base_url, timeout=120) as http:
        answer = http.post("/v1/videos", json=body, headers=headers)
        if answer.status_code not in (200, 202) and "video_id" not in answer.json().get("error", {}):
            return {
                "n": n,
                "situation": situation,
                "status": f"http_{answer.status_code}",
                "code": answer.json()["error"]["code"],
                "ok": answer.status_code in (429, 503),
            }
        error = answer.json().get("error") or {}
        video_id = answer.json().get("id") or error.get("video_id")
        if situation == "cancelled":
            time.sleep(rng.uniform(0.0, 0.5))
            http.post(f"/v1/videos/{video_id}/cancel")
        give_up = time.monotonic() + 600
        while (video := http.get(f"/v1/videos/{video_id}").json())["status"] not in ("completed", "failed"):
            if time.monotonic() > give_up:
                return {"n": n, "situation": situation, "status": "stuck", "code": None, "ok": False}
            time.sleep(0.2)
        if video["status"] == "completed":
            ok = check_video(http.get(f"/v1/videos/{video_id}/content").content, video)
            return {"n": n, "situation": situation, "status": "completed", "code": video.get("tier"), "ok": ok}
        code = video["error"]["code"]
        ok = code in ALLOWED_FAILURES[situation]
        if code == "deadline_exceeded" and situation != "short_deadline":
            # Killed replicas and reruns can use up any deadline; but a job must
            # not fail for its deadline before that deadline has passed.
            deadline = DEFAULT_JOB_DEADLINE_S if headers else DEFAULT_SYNC_DEADLINE_S
            ok = video["completed_at"] - video["created_at"] >= deadline - 1
        return {"n": n, "situation": situation, "status": "failed", "code": code, "ok": ok}


def check_video(mp4: bytes, video: dict) -> bool:
    from serve_app.video import probe_mp4

    try:
        info = probe_mp4(mp4)
    except Exception:  # noqa: BLE001 - an unplayable file is the failure being looked for
        return False
    return (info.frames, info.width, info.height) == (video["num_frames"], video["width"], video["height"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=80)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.08, help="share of model calls given a fault")
    parser.add_argument("--kill-every", type=float, default=6.0, help="seconds between replica kills")
    parser.add_argument("--seed", type=int, default=11)
    opts = parser.parse_args()

    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import ServiceArgs

    rng = random.Random(opts.seed)
    faults = {**fault_plan(rng, opts.jobs * 3, opts.fault_rate), "step_delay_s": 0.05}
    args = ServiceArgs(
        data_dir=tempfile.mkdtemp(prefix="soak-"),
        job_max_attempts=4,
        job_lease_s=3,
        dispatch_interval_s=0.5,
        faults=faults,
    )
    port = free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    chaos = Chaos(opts.kill_every, random.Random(opts.seed + 1))
    started = time.monotonic()
    try:
        serve.run(build_app(args), name="video", route_prefix="/")
        chaos.start()
        base_url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(opts.concurrency) as pool:
            results = list(
                pool.map(lambda n: run_job(base_url, n, random.Random(opts.seed * 1000 + n)), range(opts.jobs))
            )
    finally:
        chaos.stop.set()
        serve.shutdown()
        ray.shutdown()
    elapsed = time.monotonic() - started

    outcomes = Counter(f"{r['status']}:{r['code']}" for r in results)
    wrong = [r for r in results if not r["ok"]]
    planned = {kind: sum(len(v) for v in plan.values()) for kind, plan in faults.items() if isinstance(plan, dict)}
    path = write_result(
        f"soak-{slug(card_name())}-tiny",
        {
            "jobs": opts.jobs,
            "elapsed_s": round(elapsed, 1),
            "faults_planned": planned,
            "replicas_killed": dict(chaos.kills),
            "outcomes": dict(outcomes),
            "by_situation": {
                s: dict(Counter(f"{r['status']}:{r['code']}" for r in results if r["situation"] == s))
                for s in ALLOWED_FAILURES
            },
            "wrong": wrong,
            "all_correct": not wrong,
        },
    )
    print(
        f"\nSoak: {opts.jobs} jobs in {elapsed:.0f} s on {card_name()}; faults planned {planned}; "
        f"replicas killed {dict(chaos.kills)}"
    )
    print(f"{'outcome (status:code or tier)':<40} {'jobs':>5}")
    for outcome, count in sorted(outcomes.items()):
        print(f"{outcome:<40} {count:>5}")
    print(f"every job in a correct terminal state: {'yes' if not wrong else f'NO ({len(wrong)} wrong): {wrong}'}")
    print(f"wrote {path}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
