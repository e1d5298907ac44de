"""Multi-GPU speed: one video split over N GPUs against one GPU, the project's path and plain diffusers.

    python bench/bench_parallel.py                      # on a 4 x H100 host (8 where there), < 9 min
    python bench/bench_parallel.py --gpus 1 2 --settings 480p
    python bench/bench_parallel.py --smoke              # the tiny model on a CPU: checks this script

Settings: 1280x704x121 x 50 steps ("720p") and 832x480x81 x 20 steps ("480p"),
guidance 5.0, seed 1234, the wan2.2-ti2v-5b-random profile, the exact path.
Every row is a separate process (spawned, one card each; NCCL_NVLS_ENABLE=0):
  project    the single-GPU project path: DenoiserRuntime (the profile's speed
             options, FP8 variants off: exact path) + denoise_optimized, warmed
             per shape with 2 steps; then the VAE decode as a single-GPU replica
             does it (streaming, uint8 frames), and WanPipeline's one-shot tail
             (decode_latents) for reference;
  plain      WanPipeline.__call__ as a user calls it, output_type="latent",
             warmed per shape with 2 steps;
  N GPUs     N ranks of the multi-GPU loop (serve_app/pipeline/parallel):
             ParallelGroup.join, ParallelRuntime (compiled, context parallel),
             2-step warm-up per shape, denoise_parallel timed on rank 0 from a
             barrier, then the parallel VAE decode (decode_parallel).
Every process builds the model with the profile's seed, so all hold the same
weights and prompt embeddings (each reports a fingerprint; the JSON says
whether they agree). The driver computes rel L2 of each run's final latents
against the project's single-GPU latents, and the PSNR of the parallel decode
against the single-GPU decode of the same (random, shared) latents.
Independent jobs run CONCURRENTLY on separate cards, packed into phases (on
4 cards: project, plain and the 2-GPU run at once, then the 4-GPU run); the
JSON lists the phases. --budget-s skips what its H100 estimates say would not
fit and says so. Writes bench/results/parallel-<card>.json (and $OUT/ when
set) after each phase; prints the table last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, slug, write_result
from bench.parallel_speed import plan
from bench.parallel_speed.rows import build_rows, goals

# What the driver needs after the last phase: reading latents, rel L2, the JSON.
TAIL_RESERVE_S = 20.0
COLLECTIVE_TIMEOUT_S = 300.0
SMOKE_SLOTS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--settings", nargs="+", default=["720p", "480p"], choices=list(plan.SETTINGS))
    parser.add_argument(
        "--gpus",
        type=int,
        nargs="+",
        default=None,
        help="GPU counts to run (1: the single-GPU project path and plain diffusers); default 1 2 4, and 8 "
        "where 8 cards are visible",
    )
    parser.add_argument("--budget-s", type=float, default=510.0, help="the whole run; what would not fit is skipped")
    parser.add_argument(
        "--estimate-scale",
        type=float,
        default=None,
        help="multiplies the H100 time estimates the budget is read with (default 1; 0 with --smoke)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, gloo, 2 processes, 1 step")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--tag", default="", help="suffix of the result file: parallel-<card>-<tag>.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.profile = "tiny"
        args.gpus = args.gpus or [1, 2]
    if args.estimate_scale is None:
        args.estimate_scale = 0.0 if args.smoke else 1.0
    return args


def visible_gpus() -> int:
    import torch

    # Creates no CUDA context (and spawned children start clean whatever the parent did).
    return torch.cuda.device_count()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    deadline = started + args.budget_s - TAIL_RESERVE_S
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # the GPU host asks for NVLink multicast off
    # --smoke: CPU "slots" for every job at once (one phase: the processes' start-up, not the
    # tiny model, is what takes time there); the phase plan itself is unit-tested.
    devices = SMOKE_SLOTS if args.smoke else visible_gpus()
    counts = args.gpus or ([1, 2, 4] + ([8] if devices >= 8 else []))
    phases, unrunnable = plan.plan_phases(plan.jobs_for(counts), devices)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    if args.smoke:
        from serve_app.config import load_model_profile
        from serve_app.pipeline.tiny import ensure_tiny_model

        # Built once here: every process then loads it (four building it at once would race).
        ensure_tiny_model(load_model_profile("tiny"), Path(args.data_dir) / "models")
    base = {
        "settings": args.settings,
        "smoke": args.smoke,
        "profile": args.profile,
        "data_dir": str(Path(args.data_dir).resolve()),
        "out_dir": str(out_dir),
        "cuda": not args.smoke and devices > 0,
        "deadline": deadline,
        "estimate_scale": args.estimate_scale,
        "warmup_steps": 1 if args.smoke else plan.WARMUP_STEPS,
        "timeout_s": COLLECTIVE_TIMEOUT_S,
    }
    state: dict[str, Any] = {
        "profile": args.profile,
        "settings": {k: (plan.SMOKE_SETTINGS if args.smoke else plan.SETTINGS)[k].label for k in args.settings},
        "guidance": plan.GUIDANCE,
        "seed": plan.SEED,
        "gpu_counts": counts,
        "visible_gpus": devices if not args.smoke else 0,
        "budget_s": args.budget_s,
        "concurrency": "jobs of one phase ran at the same time, each in its own processes on its own cards "
        "(they share the host's CPUs, PCIe and power; no card is shared)",
        "phases": [],
        "skipped": list(unrunnable),
        "errors": {},
    }
    jobs: list[dict[str, Any]] = []
    try:
        for phase in phases:
            names = [p.job.name for p in phase.placements]
            left = deadline - time.time()
            need = args.estimate_scale * max(
                plan.STARTUP_S[p.job.kind] + min(plan.estimate_setting_s(p.job, s) for s in args.settings)
                for p in phase.placements
            )
            entry = {
                "index": phase.index,
                "jobs": {p.job.name: p.devices for p in phase.placements},
                "concurrent": len(phase.placements) > 1,
                "estimate_s": round(args.estimate_scale * plan.estimate_phase_s(phase, args.settings), 1),
            }
            state["phases"].append(entry)
            for p in phase.placements:
                job = {"name": p.job.name, "kind": p.job.kind, "gpus": p.job.gpus, "devices": p.devices}
                jobs.append({**job, "phase": phase.index})
            if left < need:
                entry["skipped"] = f"{left:.0f} s of budget left, its shortest piece needs ~{need:.0f} s"
                state["skipped"] += [f"{name}: {entry['skipped']}" for name in names]
                print(f"SKIP phase {phase.index} ({', '.join(names)}): {entry['skipped']}", flush=True)
                continue
            unit = "GPU" if base["cuda"] else "CPU slot"
            where = "; ".join(f"{p.job.name} on {unit} {p.devices}" for p in phase.placements)
            print(f"--- phase {phase.index}: {where} (t={time.time() - started:.0f}s)", flush=True)
            entry.update(run_phase_entry(phase, base, deadline + TAIL_RESERVE_S / 2))
            save(args, state, jobs, out_dir, started)
    finally:
        result = save(args, state, jobs, out_dir, started)
        print_table(result)
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def run_phase_entry(phase, base: dict, hard_deadline: float) -> dict:
    from bench.parallel_speed.runner import run_phase

    return run_phase(phase, base, hard_deadline)


def save(args, state: dict, jobs: list[dict], out_dir: Path, started: float) -> dict:
    """Rows from the reports written so far, the goals, and the JSON (rewritten after each phase)."""
    from bench.parallel_speed.collect import collect

    measured, checks = collect(out_dir, jobs, args.settings)
    labels = plan.SMOKE_SETTINGS if args.smoke else plan.SETTINGS
    rows = build_rows(measured, jobs, args.settings, {k: labels[k].label for k in args.settings})
    errors = {**state["errors"], **checks.pop("errors_from_processes")}
    for phase in state["phases"]:
        errors.update(phase.get("killed", {}))
    result = {
        **state,
        "card": checks.pop("card", None) or _card(),
        "rows": rows,
        "goals": {"smoke": "the tiny model on a CPU: no goal applies"} if args.smoke else goals(rows),
        "skipped": state["skipped"] + checks.pop("skipped_settings"),
        "errors": errors,
        **checks,
        "elapsed_s": round(time.time() - started, 1),
    }
    name = f"parallel-{slug(result['card'])}" + (f"-{slug(args.tag)}" if args.tag else "")
    result["path"] = str(write_result(name, result, Path(args.results_dir)))
    return result


def _card() -> str:
    from bench.common import card_name

    return card_name()


def print_table(result: dict) -> None:
    print()
    print(
        f"card: {result['card']}; profile {result['profile']}; seed {result['seed']}; guidance {result['guidance']}; "
        f"GPU counts {result['gpu_counts']}; weights identical in every process: {result.get('weights_identical')}; "
        f"prompt embeddings identical: {result.get('embeddings_identical')}"
    )
    for phase in result["phases"]:
        jobs = ", ".join(f"{name} {devices}" for name, devices in phase["jobs"].items())
        how = "concurrently on separate cards" if phase["concurrent"] else "alone"
        print(f"phase {phase['index']}: {jobs} ({how}; {phase.get('wall_s', phase.get('skipped'))} s)")
    print()
    columns = ["card", "setting", "GPUs", "path", "denoise s", "vs 1 GPU", "vs plain", "rel L2 vs 1 GPU"]
    columns += ["decode s", "decode 1 GPU s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for r in result["rows"]:
        rel = r.get("rel_l2_vs_1gpu")
        print(
            f"| {result['card']} | {r['setting']} | {r['gpus']} | {r['path']} | {r['time_s']:.2f} | "
            f"{_fmt(r['speedup_vs_1gpu'])} | {_fmt(r['speedup_vs_plain'])} | {'' if rel is None else f'{rel:.2e}'} | "
            f"{_fmt(r.get('decode_s'))} | {_fmt(r.get('decode_s_1gpu'))} |"
        )
    print()
    for goal, verdict in result["goals"].items():
        print(f"goal {goal}: {verdict}")
    for line in result["skipped"]:
        print(f"skipped: {line}")
    for name, error in result["errors"].items():
        print(f"error {name}: {error.strip().splitlines()[-1][:300] if error.strip() else error}")
    print(f"wrote {result['path']} ({result['elapsed_s']} s)")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
