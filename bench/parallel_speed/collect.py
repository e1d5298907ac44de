"""The driver's side of bench/bench_parallel.py: the processes' reports read back and compared.

Per job and setting: rank 0's figures, the rel L2 of its final latents against
the single-GPU project's latents, and for the parallel decode the PSNR of the
frames it decoded from the shared random latents against the project's. Per
run: whether every process held the same weights and prompt embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.parallel_speed.rows import rel_l2
from bench.parallel_speed.runner import merged_settings, read_reports


def collect(out_dir: str | Path, jobs: list[dict], settings: list[str]) -> tuple[dict, dict[str, Any]]:
    """(measured[job][setting], checks) from the reports under `out_dir` so far."""
    measured: dict[str, dict[str, dict[str, Any]]] = {}
    processes: dict[str, list[dict | None]] = {}
    errors: dict[str, str] = {}
    skipped: list[str] = []
    weights, embeddings, devices = set(), set(), []
    for job in jobs:
        reports = read_reports(out_dir, job["name"], job["gpus"] if job["kind"] == "parallel" else 1)
        if not any(reports):
            continue
        measured[job["name"]] = merged_settings(reports)
        processes[job["name"]] = [_summary(r) for r in reports]
        for rank, report in enumerate(reports):
            if report is None:
                errors[f"{job['name']} rank {rank}"] = "no report (killed, or died before writing one)"
                continue
            if report.get("error"):
                errors[f"{job['name']} rank {rank}"] = report["error"]
            weights.add(report.get("weights_fingerprint"))
            if report.get("embeddings_fingerprint"):
                embeddings.add(report["embeddings_fingerprint"])
            if report.get("device") and report["device"] != "cpu":
                devices.append(report["device"])
        for setting, got in measured[job["name"]].items():
            if got.get("skipped"):
                skipped.append(f"{job['name']} {setting}: {got['skipped']}")
    _compare(measured, settings)
    checks: dict[str, Any] = {
        "weights_identical": None if not weights else len(weights) == 1,
        "embeddings_identical": None if not embeddings else len(embeddings) == 1,
        "processes": processes,
        "errors_from_processes": errors,
        "skipped_settings": skipped,
    }
    if devices:
        checks["card"] = devices[0]
        checks["cards_seen"] = sorted(set(devices))
    return measured, checks


def _summary(report: dict | None) -> dict | None:
    if report is None:
        return None
    keep = ("device", "visible_devices", "build_s", "join_s", "compile_and_warmup_s", "warmup_s", "group", "speed")
    return {k: report[k] for k in keep if k in report} | {"attention_backend": report.get("attention_backend")}


def _compare(measured: dict, settings: list[str]) -> None:
    """rel L2 of every job's latents vs the project's, and the parallel decode's PSNR vs the project's."""
    import numpy as np
    import torch

    from bench.gpu_speed.harness import psnr

    reference = measured.get("project", {})
    for setting in settings:
        ref = reference.get(setting, {})
        ref_latents = torch.load(ref["latents"]) if ref.get("latents") else None
        ref_frames = np.load(ref["warm_frames"]) if ref.get("warm_frames") else None
        for name, per_setting in measured.items():
            got = per_setting.get(setting)
            if not got:
                continue
            if ref_latents is not None and got.get("latents"):
                got["rel_l2_vs_1gpu"] = float(f"{rel_l2(torch.load(got['latents']).numpy(), ref_latents.numpy()):.4g}")
            if name != "project" and ref_frames is not None and got.get("warm_frames"):
                frames = np.load(got["warm_frames"])
                got["decode_psnr_vs_1gpu_db"] = psnr(frames, ref_frames)
                if frames.shape == ref_frames.shape:
                    diff = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
                    got["decode_max_abs_diff_vs_1gpu"] = int(diff.max())
            for key in ("latents", "warm_frames"):  # temporary files, gone after the run
                got.pop(key, None)
