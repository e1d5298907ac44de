"""The shipped deployment, end to end, as a new user meets it.

    python bench/gpu_e2e.py                                   # configs/serve_gpu.yaml on one card
    python bench/gpu_e2e.py --config configs/serve_gpu_2x.yaml
    python bench/gpu_e2e.py --config configs/serve_gpu_4x.yaml --skip-in-process   # 4 GPUs, + 720p over HTTP
    python bench/gpu_e2e.py --config serve_config.yaml --quick  # the tiny model on a CPU (checks the script)

Starts `serve run <config>` from a clean Ray and a fresh data_dir (a copy of
the config with `data_dir` and the port changed, nothing else), then:

1. cold start: process start to the first 200 of a preview request;
2. warm start: the same after a stop, with the compile caches it left on disk;
3. HTTP latency per preset (`--presets`), the client's wall time;
4. cache hit p50: one request repeated after it filled the cache;
5. the official `openai` SDK: `create_and_poll` + `download_content`, the mp4 decoded;
6. 40 hostile requests: each must get a JSON 4xx naming a code;
7. three bursts of 30 simultaneous creates, 10 of them identical:
   (a) the default deadline, (b) `deadline_s: 20`, (c) `Prefer: respond-async`;
   then every accepted job is followed to its final state;
8. after the app is stopped: the same stages in this process (the deployment
   classes built without Ray, same profile, same warm-up), same presets,
   the baseline of the HTTP figures.

With a config that deploys the multi-GPU denoiser (`stages.parallel_denoiser`,
configs/serve_gpu_4x.yaml), one more measured step after 5: "720p over HTTP",
one 1280x704x121, 50-step guided request through the official SDK once a
ParallelDenoiser replica serves, timed from the create to the mp4's bytes
(`parallel_720p_s`, against issue 17's goal: <= 30 s on 4 GPUs, <= 18 s on 8;
bench/e2e_parallel.py). Every other step runs as before: their requests
(preview, 832x480x81) stay under the config's `min_latent_tokens`, so they
measure the single-GPU replicas beside it; the replica restart kills those
(the multi-GPU replica's replacement is tests/integration/test_parallel_denoiser.py's).
A config whose model replicas do not fit this host's GPUs stops the run before
`serve run` (which would wait for them until --start-limit-s). With such a config
`serve run` gets RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1 (unless set otherwise),
as the config's header asks.

Each burst request ends as one of: ok_in_deadline (a video within its
deadline), refused_immediately (429/503 with Retry-After within 1 s),
accepted_then_failed (accepted, then failed, timed out, or finished late),
server_errors (any other 5xx, or no answer). Writes
bench/results/e2e-<card>-<config>.json and prints a table last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import e2e_parallel  # noqa: E402
from bench.common import card_name, free_port, slug, write_result  # noqa: E402
from bench.e2e_traffic import BURSTS, burst, follow_jobs, hostile_requests  # noqa: E402
from bench.serve_process import ServeRun, kill_replicas, write_config  # noqa: E402

# Goals (issue: the GPU deployment works end to end).
GOAL_COLD_START_S = 90.0
GOAL_WARM_START_S = 30.0
GOAL_HTTP_OVERHEAD = (0.05, 0.030)  # within 5% or 30 ms of in-process
GOAL_BURST_A_MIN_OK = 9  # in time, default deadline: at least what 8211e22 managed
# What the in-process baseline needs at the end of --budget-s (model build, warm-up, runs).
IN_PROCESS_RESERVE_S = 120.0
# How long the 720p step waits for a ParallelDenoiser replica; it has had the cold and warm
# starts and the preset runs (minutes) to come up, so a longer wait only spends the budget.
PARALLEL_READY_LIMIT_S = 120.0


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def git_commit() -> str:
    """HEAD; on a host that got the tree without .git, what WAN_COMMIT says."""
    if os.environ.get("WAN_COMMIT"):
        return os.environ["WAN_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def first_video(
    client: httpx.AsyncClient, server: ServeRun, body: dict, limit_s: float, since: float | None = None
) -> float:
    """Seconds from `since` (default: the process start) until a create answers 200 with a finished video."""
    since = server.started_at if since is None else since
    last = "no answer"
    while time.perf_counter() - since < limit_s:
        if not server.alive():
            raise RuntimeError(f"serve run exited ({server.proc.returncode}); see {server.log_path}")
        try:
            response = await client.post("/v1/videos", json=body, headers={"Prefer": "wait=120"}, timeout=150)
            if response.status_code == 200 and response.json().get("status") == "completed":
                return time.perf_counter() - since
            if response.status_code == 202:  # accepted as a job: its completion is the first video
                done = await follow_jobs(client, [response.json()["id"]], limit_s)
                if done[0].get("status") == "completed":
                    return time.perf_counter() - since
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            last = type(exc).__name__
        await asyncio.sleep(1.0)
    raise RuntimeError(f"no video within {limit_s:.0f} s (last answer: {last}); see {server.log_path}")


MODEL_DEPLOYMENTS = ("PromptEncoder", "Denoiser", "VideoEncoder")


def kill_model_replicas(app: str = "video") -> int:
    """ray.kill every replica of the model stages, as a crash would; Serve starts new ones."""
    import ray

    ray.init(address="auto", log_to_driver=False)
    try:
        return kill_replicas(app, MODEL_DEPLOYMENTS)
    finally:
        ray.shutdown()


async def replica_restart(base_url: str, server: ServeRun, body: dict, limit_s: float) -> dict:
    """Every model replica killed at once, Ray and the gateway still up: seconds until a video
    comes back. What a replaced or autoscaled replica costs with the compile caches on disk."""
    started = time.perf_counter()
    killed = await asyncio.to_thread(kill_model_replicas)
    async with httpx.AsyncClient(base_url=base_url) as client:
        seconds = await first_video(client, server, body, limit_s, since=started)
        warm_up = await background_warm_up(client)
    return {"killed": killed, "seconds": seconds, "warm_up": warm_up}


async def preset_latencies(
    client: httpx.AsyncClient, presets: list[str], runs: dict[str, int], extra: dict
) -> dict[str, dict]:
    out = {}
    for preset in presets:
        samples, service = [], []
        for n in range(runs[preset] + 1):  # the first is a warm-up of this shape through the graph
            body = {
                "preset": preset,
                "prompt": f"latency probe {preset} {n}",
                "seed": 7,
                "cache": False,
                "quality": "exact",
                **extra,
            }
            started = time.perf_counter()
            response = await client.post("/v1/videos", json=body, headers={"Prefer": "wait=600"}, timeout=660)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{preset}: {response.status_code} {response.text[:300]}")
            if n:
                samples.append(elapsed)
                service.append(response.json().get("timings", {}))
        out[preset] = {
            "http_s": statistics.median(samples),
            "samples_s": [round(s, 4) for s in samples],
            "service_timings": service[-1] if service else {},
        }
        print(f"  {preset}: HTTP median {out[preset]['http_s']:.3f} s over {len(samples)}", flush=True)
    return out


async def cache_hits(client: httpx.AsyncClient, extra: dict, n: int = 30) -> dict:
    body = {"preset": "preview", "prompt": "a lighthouse at dusk, cache probe", "seed": 11, **extra}
    first = await client.post("/v1/videos", json=body, headers={"Prefer": "wait=600"}, timeout=660)
    if first.status_code != 200:
        raise RuntimeError(f"cache fill: {first.status_code} {first.text[:300]}")
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post("/v1/videos", json=body, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or not response.json().get("cached"):
            raise RuntimeError(f"expected a cache hit, got {response.status_code} {response.text[:200]}")
    return {"p50_ms": statistics.median(times), "max_ms": max(times), "n": n}


def sdk_round_trip(base_url: str, extra: dict) -> dict:
    """The official SDK, unchanged: create_and_poll, then download_content; the mp4 must decode."""
    import openai

    from serve_app.video import probe_mp4

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    # OpenAI's fields: `size` carries width x height, the rest goes in extra_body.
    size = f"{extra['width']}x{extra['height']}" if "width" in extra else "640x480"
    rest = {k: v for k, v in extra.items() if k not in ("width", "height", "num_frames")}  # `seconds` says it
    started = time.perf_counter()
    try:
        video = client.videos.create_and_poll(
            prompt="a paper boat on a puddle, SDK round trip",
            seconds="1",
            size=size,
            extra_body={"preset": "preview", **rest},
            poll_interval_ms=250,
        )
        mp4 = client.videos.download_content(video.id).read()
        info = probe_mp4(mp4)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500], "openai": openai.__version__}
    ok = video.status == "completed" and info.frames > 0 and f"{info.width}x{info.height}" == video.size == size
    return {
        "ok": ok,
        "status": video.status,
        "frames": info.frames,
        "size": f"{info.width}x{info.height}",
        "bytes": len(mp4),
        "seconds": round(time.perf_counter() - started, 3),
        "openai": openai.__version__,
    }


def in_process_latencies(config_args: dict, presets: list[str], runs: dict[str, int], extra: dict) -> dict:
    """The same stages in this process: the deployment classes without Ray, called in turn."""
    from bench.e2e_inprocess import InProcessGraph

    graph = InProcessGraph(config_args)
    out = {}
    try:
        for preset in presets:
            samples, stage_samples = [], []
            for n in range(runs[preset] + 1):
                elapsed, stages = graph.run(
                    {"preset": preset, "prompt": f"latency probe {preset} {n}", "seed": 7, **extra}
                )
                if n:
                    samples.append(elapsed)
                    stage_samples.append(stages)
            out[preset] = {
                "in_process_s": statistics.median(samples),
                "samples_s": [round(s, 4) for s in samples],
                "stages_s": {
                    name: round(statistics.median(s[name] for s in stage_samples), 4) for name in stage_samples[0]
                },
            }
            print(f"  {preset}: in-process median {out[preset]['in_process_s']:.3f} s", flush=True)
    finally:
        graph.close()
    return {"startup_s": graph.startup_s, "presets": out}


def overhead_ok(http_s: float, in_process_s: float) -> bool:
    ratio, added = GOAL_HTTP_OVERHEAD
    return http_s <= in_process_s * (1 + ratio) or http_s - in_process_s <= added


async def background_warm_up(client: httpx.AsyncClient, limit_s: float = 180.0) -> dict:
    """Wait until no stage has warm-up steps pending (speed.warmup_in_background); each
    stage's warm-up timings from /healthz, and how long after the first video they ended."""
    started = time.perf_counter()
    stages: dict = {}
    while time.perf_counter() - started < limit_s:
        health = (await client.get("/healthz", timeout=30)).json()
        stages = {name: (stage.get("replica") or {}) for name, stage in health.get("stages", {}).items()}
        if not any(replica.get("warmup_pending") for replica in stages.values()):
            break
        await asyncio.sleep(0.5)
    return {
        "after_first_video_s": round(time.perf_counter() - started, 2),
        "stages": {
            name: {
                "load_s": r.get("load_s"),
                "startup_phases": r.get("startup_phases"),
                "warmup_s": r.get("warmup_s"),
                "pending": r.get("warmup_pending"),
                "compile_cache_hits": r.get("compile_cache_hits"),
            }
            for name, r in stages.items()
        },
    }


def sdk_image_round_trip(base_url: str, extra: dict) -> dict:
    """Image to video through the official SDK: `input_reference` as a file, as a user sends it."""
    import io

    import openai
    from PIL import Image

    from serve_app.video import probe_mp4

    picture = Image.new("RGB", (800, 600), (30, 90, 200))
    picture.paste((240, 200, 40), (200, 150, 600, 450))  # something for the VAE to keep
    upload = io.BytesIO()
    picture.save(upload, format="PNG")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    rest = {k: v for k, v in extra.items() if k not in ("width", "height", "num_frames")}
    started = time.perf_counter()
    try:
        video = client.videos.create_and_poll(
            prompt="the yellow square drifts to the right, SDK image to video",
            input_reference=("square.png", upload.getvalue(), "image/png"),
            seconds="1",
            size="640x480",
            extra_body={"preset": "preview", **rest},
            poll_interval_ms=250,
        )
        mp4 = client.videos.download_content(video.id).read()
        info = probe_mp4(mp4)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    sha = getattr(video, "input_reference_sha256", None) or (video.model_extra or {}).get("input_reference_sha256")
    ok = video.status == "completed" and info.frames > 0 and bool(sha)
    return {
        "ok": ok,
        "status": video.status,
        "frames": info.frames,
        "size": f"{info.width}x{info.height}",
        "input_reference_sha256": sha,
        "seconds": round(time.perf_counter() - started, 3),
    }


async def fast_against_exact(client: httpx.AsyncClient, extra: dict) -> dict:
    """The same 832x480x81, 20-step request with `quality: exact` and `quality: fast` (FP8
    attention in the GPU profiles), synchronously over HTTP: seconds each and what the answer says."""
    out: dict = {}
    for quality in ("exact", "fast"):
        body = {
            "prompt": "a red fox running through fresh snow",
            "preset": "standard",
            "num_inference_steps": 20,
            "seed": 7,
            "quality": quality,
            "cache": False,
            **extra,
        }
        started = time.perf_counter()
        response = await client.post("/v1/videos", json=body, headers={"Prefer": "wait=120"}, timeout=150)
        video = response.json()
        out[quality] = {
            "status_code": response.status_code,
            "status": video.get("status"),
            "http_s": round(time.perf_counter() - started, 3),
            "fast": video.get("fast"),
            "denoise_s": (video.get("timings") or {}).get("denoise_s"),
        }
    exact, fast = out["exact"], out["fast"]
    used_fp8 = bool((fast["fast"] or {}).get("fp8_attention"))
    out["ok"] = exact["status"] == "completed" and fast["status"] == "completed" and used_fp8
    if out["ok"]:
        out["fast_vs_exact"] = round(exact["http_s"] / fast["http_s"], 3)
    return out


async def measure_running_app(base_url: str, args, extra: dict, result: dict) -> None:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
        result["warm_up"] = await background_warm_up(client)
        print(
            f"background warm-up ended {result['warm_up']['after_first_video_s']} s after the first video: "
            f"{json.dumps(result['warm_up']['stages'])}",
            flush=True,
        )
        print("per-preset HTTP latency", flush=True)
        result["http"] = await preset_latencies(client, args.presets, args.runs, extra)
        result["cache"] = await cache_hits(client, extra)
        print(f"cache hit p50 {result['cache']['p50_ms']:.1f} ms", flush=True)
        result["sdk"] = await asyncio.to_thread(sdk_round_trip, base_url, extra)
        print(f"SDK: {result['sdk']}", flush=True)
        if args.parallel is not None:
            # The multi-GPU replica's request: after the SDK check, before the bursts use the app.
            result["parallel_720p"] = await e2e_parallel.parallel_720p(
                base_url, args.parallel, extra, args.max_deadline_s, min(args.start_limit_s, PARALLEL_READY_LIMIT_S)
            )
            step = result["parallel_720p"]
            result["parallel_720p_s"] = step.get("seconds") if step.get("ok") else None
            result["parallel_720p_goal_s"], result["parallel_720p_met"] = step.get("goal_s"), step.get("met")
            print(f"720p over HTTP: {json.dumps(result['parallel_720p'])}", flush=True)
        result["sdk_image"] = await asyncio.to_thread(sdk_image_round_trip, base_url, extra)
        print(f"SDK image to video: {result['sdk_image']}", flush=True)
        result["fast"] = await fast_against_exact(client, extra)
        print(f"quality fast vs exact: {result['fast']}", flush=True)
        result["hostile"] = await hostile_requests(client)
        print(f"hostile: {result['hostile']['json_4xx']}/{result['hostile']['sent']} JSON 4xx", flush=True)
        result["bursts"] = []
        for name, spec in BURSTS.items():
            if name in args.skip_bursts:
                continue
            outcome = await burst(
                client, name, spec, extra, args.default_deadline_s, args.job_deadline_s, args.follow_until
            )
            result["bursts"].append(outcome)
            print(f"burst {name}: {json.dumps({k: v for k, v in outcome.items() if k != 'answers'})}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/serve_gpu.yaml")
    parser.add_argument("--presets", nargs="+", default=["preview", "standard"])
    parser.add_argument("--runs", type=int, default=9, help="timed requests of the preview preset")
    parser.add_argument("--runs-large", type=int, default=1, help="timed requests of each larger preset")
    parser.add_argument(
        "--skip-in-process",
        action="store_true",
        help="no in-process baseline (e.g. a second config on the same card type)",
    )
    parser.add_argument("--skip-bursts", nargs="*", default=[], choices=list(BURSTS))
    parser.add_argument("--start-limit-s", type=float, default=300.0)
    parser.add_argument(
        "--quick", action="store_true", help="small requests (a CPU check of the script: 128x128, 9 frames, 4 steps)"
    )
    parser.add_argument("--tag", default="", help="suffix of the result file's name (after a dash)")
    parser.add_argument("--log-dir", default="", help="copy the serve log here at the end")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="whole run; jobs still unfinished when the bursts' share of it ends count as failed",
    )
    args = parser.parse_args()
    # Bursts may follow their jobs until this moment; the rest is the in-process baseline's.
    args.follow_until = time.perf_counter() + args.budget_s - (0 if args.skip_in_process else IN_PROCESS_RESERVE_S)

    source = (ROOT / args.config).resolve()
    from serve_app.serve_config import folded_args

    # The app's args with its `deployments:` entries (resources, live settings) folded in:
    # what the in-process baseline builds, as `serve run` runs the config.
    declared = folded_args(yaml.safe_load(source.read_text())["applications"][0])
    app_args = declared.model_dump()
    args.default_deadline_s = declared.default_deadline_s
    args.job_deadline_s = declared.default_job_deadline_s
    args.max_deadline_s = declared.max_deadline_s
    args.parallel = e2e_parallel.parallel_options(declared)
    args.runs = {p: (args.runs if p == "preview" else args.runs_large) for p in args.presets}
    extra = {"width": 128, "height": 128, "num_frames": 9, "num_inference_steps": 4} if args.quick else {}
    card = card_name()
    print(f"card: {card}; config {args.config}; commit {git_commit()[:12]}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="wan-e2e-"))
    data_dir = work / "data"
    data_dir.mkdir()
    port = free_port()
    config = write_config(source, data_dir, port, {})
    base_url = f"http://127.0.0.1:{port}"
    probe = {"preset": "preview", "cache": False, **extra}
    result: dict[str, Any] = {
        "commit": git_commit(),
        "config": args.config,
        "card": card,
        "gpus": gpu_count(),
        "data_dir": str(data_dir),
        "requests": extra or "presets as shipped",
    }
    if args.skip_in_process:
        result["skip_in_process"] = True
    if args.parallel is not None:
        result["parallel_denoiser"] = e2e_parallel.describe(args.parallel)
        for name, value in e2e_parallel.SERVE_ENV.items():  # inherited by `serve run`, which starts Ray
            os.environ.setdefault(name, value)
        result["serve_env"] = {name: os.environ[name] for name in e2e_parallel.SERVE_ENV}

    server = ServeRun(config, work / "serve.log")
    try:
        problem = e2e_parallel.gpu_fit_problem(yaml.safe_load(source.read_text())["applications"][0], gpu_count())
        if problem is not None:
            raise RuntimeError(problem)
        run_all(server, base_url, args, extra, probe, app_args, data_dir, result)
    except Exception as exc:  # noqa: BLE001 - a partial result with the error beats none
        result["error"] = "".join(traceback.format_exception(exc))[-4000:]
        print(result["error"], flush=True)
    finally:
        if server.alive():
            server.stop()
        result["serve_log_tail"] = _tail(work / "serve.log", 60)
        if args.log_dir:
            shutil.copy(work / "serve.log", Path(args.log_dir) / "serve.log")
    result["goals"] = goals(result)
    result["goals_met"] = "error" not in result and all(result["goals"].values())
    tag = f"-{slug(args.tag)}" if args.tag else ""
    path = write_result(f"e2e-{slug(card)}-{slug(Path(args.config).stem)}{tag}", result)
    print_table(result)
    print(f"wrote {path}", flush=True)


def run_all(
    server: ServeRun, base_url: str, args, extra: dict, probe: dict, app_args: dict, data_dir: Path, result: dict
) -> None:
    server.start()
    result["cold_start_s"] = asyncio.run(_first(base_url, server, {**probe, "prompt": "cold start"}, args))
    print(f"cold start {result['cold_start_s']:.1f} s", flush=True)
    result["stop_s"] = server.stop()
    cache_dir = data_dir / "compile-cache"
    result["compile_cache_mib"] = (
        round(sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file()) / 2**20, 1)
        if cache_dir.exists()
        else 0.0
    )
    server.start()
    result["warm_start_s"] = asyncio.run(_first(base_url, server, {**probe, "prompt": "warm start"}, args))
    print(f"warm start {result['warm_start_s']:.1f} s (compile cache {result['compile_cache_mib']} MiB)", flush=True)
    asyncio.run(measure_running_app(base_url, args, extra, result))
    result["replica_restart"] = asyncio.run(
        replica_restart(base_url, server, {**probe, "prompt": "replaced"}, args.start_limit_s)
    )
    result["replica_restart_s"] = result["replica_restart"]["seconds"]
    print(
        f"replica restart {result['replica_restart_s']:.1f} s ({result['replica_restart']['killed']} killed)",
        flush=True,
    )
    result["stop_s_second"] = server.stop()

    result["preview_http_s"] = result["http"]["preview"]["http_s"] if "preview" in result["http"] else None
    result["cache_hit_p50_ms"] = result["cache"]["p50_ms"]
    result["sdk_ok"] = result["sdk"]["ok"]
    if args.skip_in_process:
        return
    print("in-process baseline", flush=True)
    inproc = in_process_latencies({**app_args, "data_dir": str(data_dir)}, args.presets, args.runs, extra)
    result["in_process"] = inproc
    result["preview_inprocess_s"] = inproc["presets"].get("preview", {}).get("in_process_s")


async def _first(base_url: str, server: ServeRun, body: dict, args) -> float:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return await first_video(client, server, body, args.start_limit_s)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def goals(result: dict) -> dict[str, bool]:
    """Each goal of the issue; one not measured (the run broke first) counts as missed."""
    bursts = {b["name"]: b for b in result.get("bursts", [])}
    hostile = result.get("hostile", {})
    out = {
        "cold_start": result.get("cold_start_s", float("inf")) <= GOAL_COLD_START_S,
        "warm_start": result.get("warm_start_s", float("inf")) <= GOAL_WARM_START_S,
        "sdk": bool(result.get("sdk_ok")),
        "sdk_image_to_video": bool(result.get("sdk_image", {}).get("ok")),
        "quality_fast": bool(result.get("fast", {}).get("ok")),
        "hostile_all_json_4xx": bool(hostile) and hostile["json_4xx"] == hostile["sent"],
        "all_bursts_ran": len(bursts) == len(BURSTS),
        "bursts_no_server_errors": all(b["server_errors"] == 0 for b in bursts.values()),
        "bursts_none_accepted_then_failed": all(b["accepted_then_failed"] == 0 for b in bursts.values()),
        "bursts_refusals_immediate": all(b["refused_late"] == 0 for b in bursts.values()),
        "burst_default_deadline_in_time": bursts.get("default_deadline", {}).get("ok_in_deadline", 0)
        >= GOAL_BURST_A_MIN_OK,
    }
    if "parallel_denoiser" in result:  # the config deploys the multi-GPU denoiser
        out["parallel_720p_ok"] = bool(result.get("parallel_720p", {}).get("ok"))
        verdict = e2e_parallel.goal_verdict(result.get("parallel_720p_s"), result["parallel_denoiser"]["gpus"])
        if verdict["goal_s"] is not None:  # 4 and 8 GPUs have one
            out["parallel_720p_in_goal"] = bool(verdict["met"])
    if not result.get("skip_in_process"):
        out["preview_http_overhead"] = bool(result.get("preview_inprocess_s")) and overhead_ok(
            result["preview_http_s"], result["preview_inprocess_s"]
        )
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['card']} | {result['config']} | commit {result['commit'][:12]}")
    print(f"{'what':<34}{'value':>14}  goal")
    nan = float("nan")
    rows = [
        ("cold start (s)", result.get("cold_start_s", nan), f"<= {GOAL_COLD_START_S:g}"),
        ("warm start, compile caches (s)", result.get("warm_start_s", nan), f"<= {GOAL_WARM_START_S:g}"),
        ("model replicas replaced (s)", result.get("replica_restart_s", nan), ""),
        ("cache hit p50 (ms)", result.get("cache_hit_p50_ms", nan), ""),
    ]
    for preset, http in result.get("http", {}).items():
        local = result.get("in_process", {}).get("presets", {}).get(preset, {}).get("in_process_s")
        ratio = f"{http['http_s'] / local:.3f}x in-process ({local:.3f} s)" if local else ""
        rows.append((f"{preset} over HTTP (s)", http["http_s"], ratio))
    if "parallel_denoiser" in result:
        goal = e2e_parallel.GOAL_720P_S.get(result["parallel_denoiser"]["gpus"])
        rows.append(
            (
                f"720p over HTTP, {result['parallel_denoiser']['gpus']} GPUs (s)",
                result.get("parallel_720p_s") or nan,
                "no goal for this GPU count" if goal is None else f"<= {goal:g}",
            )
        )
    for name, value, goal in rows:
        print(f"{name:<34}{value:>14.3f}  {goal}")
    hostile = result.get("hostile", {"json_4xx": 0, "sent": 0})
    print(f"{'SDK create_and_poll + download':<34}{str(result.get('sdk_ok')):>14}")
    print(f"{'SDK image to video':<34}{str(result.get('sdk_image', {}).get('ok')):>14}")
    fast = result.get("fast", {})
    print(
        f"{'quality fast / exact (s, 832x480x81)':<34}{fast.get('fast', {}).get('http_s', nan):>14.3f}"
        f"  vs {fast.get('exact', {}).get('http_s', nan):.3f}"
    )
    print(f"{'hostile: JSON 4xx / sent':<34}{hostile['json_4xx']:>10}/{hostile['sent']:<3}")
    print(f"\n{'burst':<20}{'sent':>5}{'in time':>9}{'refused':>9}{'failed':>8}{'5xx':>5}{'slowest s':>11}")
    for b in result.get("bursts", []):
        print(
            f"{b['name']:<20}{b['requests']:>5}{b['ok_in_deadline']:>9}{b['refused_immediately']:>9}"
            f"{b['accepted_then_failed']:>8}{b['server_errors']:>5}{b['slowest_s']:>11.2f}"
        )
    print("\ngoals: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in result["goals"].items()))
    print(f"goals_met: {result['goals_met']}")


if __name__ == "__main__":
    main()
