"""Where a model replica's start-up time goes, one stage per fresh process.

bench/gpu_e2e.py measures a restart from outside (seconds to the first
video); this says which part of a replica's start is slow. Each stage of a
served config is built in its own subprocess, as a replica would be (the
deployment class itself, the config's args), first with an empty compile
cache and then with the cache the first run left, optionally with profile
speed overrides as extra variants. Each run reports the replica's own
startup phases and warm-up steps, plus torch.compile's breakdown of its
compile time (dynamo tracing, AOTAutograd, inductor).

    python bench/startup_probe.py --config configs/serve_gpu.yaml --stages denoiser video_encoder
    python bench/startup_probe.py --config configs/serve_gpu.yaml --stages denoiser \\
        --variant no-cudnn-benchmark:cudnn_benchmark=false

Prints a table last and writes bench/results/startup-<card>-<config>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import card_name, slug, write_result  # noqa: E402

STAGE_CLASSES = {
    "prompt_encoder": ("deployments.prompt_encoder", "PromptEncoder"),
    "denoiser": ("deployments.denoiser", "Denoiser"),
    "video_encoder": ("deployments.video_encoder", "VideoEncoder"),
}


def child(stage: str, args_json: str) -> None:
    """Build one stage as its replica would and print what its start cost, as JSON."""
    started = time.perf_counter()
    module_name, class_name = STAGE_CLASSES[stage]
    import importlib

    deployment = getattr(importlib.import_module(module_name), class_name)
    imported = time.perf_counter()
    replica = deployment.func_or_class(json.loads(args_json))
    built = time.perf_counter()
    replica.wait_warm(600)
    warm = time.perf_counter()
    import asyncio

    import torch._dynamo.utils as dynamo_utils

    described = asyncio.run(replica.describe())  # what /healthz shows of this replica

    print(
        "PROBE "
        + json.dumps(
            {
                "import_deployment_s": round(imported - started, 3),
                "constructor_s": round(built - imported, 3),
                "background_warm_up_s": round(warm - built, 3),
                "startup_phases": described["startup_phases"],
                "warmup_s": described["warmup_s"],
                "compile_times": dynamo_utils.compile_times(repr="str", aggregate=True),
            }
        ),
        flush=True,
    )


def run_stage(stage: str, app_args: dict, limit_s: float) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--args-json", json.dumps(app_args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    wall = time.perf_counter() - started
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "wall_s": round(wall, 3)}
    return {**json.loads(line[len("PROBE ") :]), "wall_s": round(wall, 3)}


def parse_variant(text: str, speed: dict) -> tuple[str, dict]:
    """`name:key=value,key=value` -> the profile's speed options with those keys changed."""
    name, _, pairs = text.partition(":")
    changed = dict(speed)
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        changed[key] = yaml.safe_load(value)
    return name, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/serve_gpu.yaml")
    parser.add_argument("--stages", nargs="+", default=list(STAGE_CLASSES), choices=list(STAGE_CLASSES))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name:speed_key=value,... run warm with these profile speed options too",
    )
    parser.add_argument(
        "--warmup-presets",
        nargs="*",
        default=["preview"],
        help="profile speed.warmup_presets for every run (the first is what a replica warms before it is ready)",
    )
    parser.add_argument("--limit-s", type=float, default=150.0, help="per stage run")
    parser.add_argument("--child", choices=list(STAGE_CLASSES), help=argparse.SUPPRESS)
    parser.add_argument("--args-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.args_json)
        return

    from serve_app.config import ServiceArgs
    from serve_app.serve_config import folded_args

    # With the config's `deployments:` entries (GPU shares: each stage's allocator cap) folded in.
    app_args = folded_args(yaml.safe_load((ROOT / args.config).read_text())["applications"][0]).model_dump(mode="json")
    data_dir = Path(tempfile.mkdtemp(prefix="wan-startup-")) / "data"
    app_args = {**app_args, "data_dir": str(data_dir)}
    speed = ServiceArgs.model_validate(app_args).model_profile().speed.model_dump()
    speed["warmup_presets"] = args.warmup_presets
    app_args["model_overrides"] = {**app_args.get("model_overrides", {}), "speed": speed}
    runs = [("cold cache", app_args), ("warm cache", app_args)]
    for text in args.variant:
        name, changed = parse_variant(text, speed)
        overrides = {**app_args.get("model_overrides", {}), "speed": changed}
        runs.append((f"warm cache, {name}", {**app_args, "model_overrides": overrides}))

    results: dict = {}
    for stage in args.stages:
        for label, run_args in runs:
            print(f"{stage}: {label}", flush=True)
            results.setdefault(stage, {})[label] = run_stage(stage, run_args, args.limit_s)
            print_run(stage, label, results[stage][label])
    card = card_name()
    path = write_result(
        f"startup-{slug(card)}-{slug(Path(args.config).stem)}", {"config": args.config, "stages": results}
    )
    print_table(card, args.config, results)
    print(f"wrote {path}", flush=True)


def print_table(card: str, config: str, results: dict) -> None:
    print(f"\n{card} | {config}")
    print(f"{'stage / run':42} {'wall':>7} {'imports':>8} {'ctor':>7} {'bg warm':>8}  phases and warm-up (s)")
    for stage, runs in results.items():
        for label, r in runs.items():
            print_run(stage, label, r, compile_times=False)


def print_run(stage: str, label: str, r: dict, compile_times: bool = True) -> None:
    if "error" in r:
        print(f"{stage + ' / ' + label:42} {r['wall_s']:7.1f}  FAILED: {r['error'][-300:]}", flush=True)
        return
    detail = {**r["startup_phases"], **r["warmup_s"]}
    print(
        f"{stage + ' / ' + label:42} {r['wall_s']:7.1f} {r['import_deployment_s']:8.2f} "
        f"{r['constructor_s']:7.2f} {r['background_warm_up_s']:8.2f}  {detail}",
        flush=True,
    )
    if compile_times:
        print(r["compile_times"], flush=True)


if __name__ == "__main__":
    main()
