"""The rows of bench/bench_parallel.py and the goals they are read against: arithmetic only.

Every ratio is against a baseline measured in the same run: `speedup_vs_1gpu`
against the project's single-GPU path, `speedup_vs_plain` against plain
diffusers on one GPU; `rel_l2_vs_1gpu` compares the final latents with the
project's single-GPU latents of the same seed.
"""

from __future__ import annotations

import math
from typing import Any

from bench.parallel_speed.plan import SETTINGS

REL_L2_GOAL = 1e-2  # issue 17: N-GPU vs 1-GPU latents, bf16


def speedup(base_s: float | None, time_s: float | None) -> float | None:
    """How many times faster `time_s` is than `base_s`; None when either is missing."""
    if base_s is None or time_s is None or time_s <= 0:
        return None
    return round(base_s / time_s, 3)


def rel_l2(value, reference) -> float:
    """||value - reference|| / ||reference||, in float64; inf when the shapes differ or the
    reference is zero, NaN when either holds a NaN (so no check can pass on it)."""
    import numpy as np

    a = np.asarray(value, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    ref = float(np.linalg.norm(b.ravel()))
    diff = float(np.linalg.norm((a - b).ravel()))
    if math.isnan(ref) or math.isnan(diff):
        return math.nan
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def build_rows(
    measured: dict[str, dict[str, dict[str, Any]]],
    jobs: list[dict],
    settings: list[str],
    labels: dict[str, str] | None = None,
) -> list[dict]:
    """One row per (job, setting) that was measured.

    `measured[job_name][setting]` holds what the job's rank 0 reported ("time_s",
    optionally "decode_s", "rel_l2_vs_1gpu" and extra fields); `jobs` are
    {"name", "kind", "gpus", "devices", "phase"} in table order; `labels` name
    the settings in the rows (default: the full-size settings' labels).
    """
    labels = labels or {key: s.label for key, s in SETTINGS.items()}
    rows = []
    for setting in settings:
        project = measured.get("project", {}).get(setting, {})
        plain = measured.get("plain", {}).get(setting, {})
        for job in jobs:
            got = measured.get(job["name"], {}).get(setting)
            if not got or got.get("time_s") is None:
                continue
            time_s = got["time_s"]
            decode_s = got.get("decode_s")
            row = {
                "gpus": job["gpus"],
                "setting": labels[setting],
                "setting_key": setting,
                "path": job["kind"],
                "time_s": round(time_s, 3),
                "speedup_vs_1gpu": speedup(project.get("time_s"), time_s),
                "speedup_vs_plain": speedup(plain.get("time_s"), time_s),
                "rel_l2_vs_1gpu": got.get("rel_l2_vs_1gpu"),
                "decode_s": decode_s,
                "decode_s_1gpu": None if decode_s is None else project.get("decode_s"),
                "decode_speedup": speedup(project.get("decode_s"), decode_s),
                "devices": job["devices"],
                "phase": job["phase"],
            }
            row.update({k: v for k, v in got.items() if k not in row and k != "time_s"})
            rows.append(row)
    return rows


def _verdict(value: float | None, ok: bool, unit: str = "") -> str:
    if value is None:
        return "not measured"
    return f"{value}{unit} {'met' if ok else 'MISSED'}"


def goals(rows: list[dict]) -> dict[str, str]:
    """The issue's goals (H100s) as far as this script measures them: the denoise (and the
    parallel decode); the HTTP figure for 4 GPUs is bench/gpu_e2e.py's `parallel_720p_s`."""

    def row(gpus: int, path: str = "parallel") -> dict | None:
        return next((r for r in rows if r["gpus"] == gpus and r["path"] == path and r["setting_key"] == "720p"), None)

    out: dict[str, str] = {}
    four, two, eight = row(4), row(2), row(8)
    total4 = None if four is None else round(four["time_s"] + (four.get("decode_s") or 0.0), 2)
    out["720p on 4 GPUs: denoise + decode <= 30 s (HTTP adds the mp4 and transport)"] = _verdict(
        total4, total4 is not None and total4 <= 30.0, " s"
    )
    s = four and four["speedup_vs_1gpu"]
    out["720p on 4 GPUs >= 3.2x the 1-GPU project path"] = _verdict(s, s is not None and s >= 3.2, "x")
    s = four and four["speedup_vs_plain"]
    out["720p on 4 GPUs >= 4.4x plain diffusers"] = _verdict(s, s is not None and s >= 4.4, "x")
    s = two and two["speedup_vs_1gpu"]
    out["720p on 2 GPUs >= 1.85x the 1-GPU project path"] = _verdict(s, s is not None and s >= 1.85, "x")
    total8 = None if eight is None else round(eight["time_s"] + (eight.get("decode_s") or 0.0), 2)
    out["720p on 8 GPUs <= 18 s (where 8 are there)"] = _verdict(total8, total8 is not None and total8 <= 18.0, " s")
    errors = [r["rel_l2_vs_1gpu"] for r in rows if r["path"] == "parallel"]
    worst = None if not errors or any(e is None for e in errors) else max(errors)
    if worst is not None and any(math.isnan(e) for e in errors):
        worst = math.nan  # max() skips a NaN depending on its position; it must fail the goal
    out[f"every N-GPU row: rel L2 vs 1 GPU <= {REL_L2_GOAL:g}"] = _verdict(
        None if worst is None else float(f"{worst:.3g}"), worst is not None and worst <= REL_L2_GOAL
    )
    return out
