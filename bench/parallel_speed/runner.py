"""Running the phases of bench/bench_parallel.py: spawned processes, one card each, and their reports.

A phase starts every process of its jobs at once (a parallel job: one process
per rank, each pinned to its own card), then waits for them until the run's
hard deadline. A job whose rank failed loses its other ranks after a short
grace (they would only wait in a collective until the group's timeout), and
everything still running at the deadline is killed; either is recorded.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from bench.common import free_port
from bench.parallel_speed import worker
from bench.parallel_speed.plan import Phase

FAILED_RANK_GRACE_S = 15.0


def tasks_of(phase: Phase, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One task per process of the phase; `base` holds what every task shares."""
    tasks = []
    for placement in phase.placements:
        job = placement.job
        common = {**base, "job": job.name, "kind": job.kind, "world": job.gpus}
        if job.kind == "parallel":
            port = free_port()
            for rank, device in enumerate(placement.devices):
                tasks.append({**common, "rank": rank, "devices": [device], "master_port": port})
        else:
            tasks.append({**common, "rank": 0, "devices": placement.devices, "master_port": None})
    return tasks


def run_phase(phase: Phase, base: dict[str, Any], hard_deadline: float) -> dict[str, Any]:
    """Start the phase's processes, wait for them; what happened to each job (exit codes, kills)."""
    context = multiprocessing.get_context("spawn")  # CUDA in a forked child is not an option
    started = time.time()
    procs = []
    for task in tasks_of(phase, base):
        proc = context.Process(target=worker.run_task, args=(task,), name=f"{task['job']}-r{task['rank']}")
        proc.start()
        procs.append((task, proc))
    failed_at: dict[str, float] = {}
    killed: dict[str, str] = {}
    while any(p.is_alive() for _, p in procs):
        now = time.time()
        for task, proc in procs:
            if not proc.is_alive() and proc.exitcode not in (0, None):
                failed_at.setdefault(task["job"], now)
        for task, proc in procs:
            if not proc.is_alive():
                continue
            job = task["job"]
            if now > hard_deadline:
                killed[job] = "killed at the end of --budget-s"
            elif job in failed_at and now - failed_at[job] > FAILED_RANK_GRACE_S:
                killed[job] = "killed: another rank of the job had failed"
            else:
                continue
            proc.kill()  # our own child, by its handle
        time.sleep(0.5)
    for _, proc in procs:
        proc.join()
    exits: dict[str, list[int | None]] = {}
    for task, proc in procs:
        exits.setdefault(task["job"], []).append(proc.exitcode)
    return {"wall_s": round(time.time() - started, 1), "exit_codes": exits, "killed": killed}


def read_reports(out_dir: str | Path, job: str, world: int) -> list[dict[str, Any] | None]:
    """Each rank's report (None where a rank wrote none: killed, or dead before its `finally`)."""
    reports: list[dict[str, Any] | None] = []
    for rank in range(world):
        path = worker.report_path(out_dir, job, rank)
        reports.append(json.loads(path.read_text()) if path.exists() else None)
    return reports


def merged_settings(reports: list[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Rank 0's figures per setting (the user's wait: rank 0 answers the replica's request),
    with the slowest rank's denoise and decode beside them."""
    first = reports[0] if reports else None
    if first is None:
        return {}
    merged: dict[str, dict[str, Any]] = {}
    for setting, got in first.get("settings", {}).items():
        row = dict(got)
        for key in ("time_s", "decode_s"):
            values = [r["settings"].get(setting, {}).get(key) for r in reports if r is not None]
            if len(reports) > 1 and values and all(v is not None for v in values):
                row[f"{key}_slowest_rank"] = max(values)
        merged[setting] = row
    return merged
