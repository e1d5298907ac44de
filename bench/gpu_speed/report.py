"""The table printed last, and the goals it is read against."""

from __future__ import annotations

import json

from bench.gpu_speed.harness import SEED, Bench


def table(bench: Bench) -> None:
    rate = bench.result.get("bf16_matmul_tflops")
    dit = bench.result.get("dit_forward_compiled", {}).get("720p batch 2", {})
    print()
    print(
        f"card: {bench.card}; torch {bench.torch.__version__}; profile {bench.args.profile}; seed {SEED}; "
        f"attention {bench.result.get('attention_backend')}"
    )
    print(
        f"bf16 matmul (8192^3): {rate} TFLOP/s; DiT forward at 720p (batch 2, compiled): "
        f"{dit.get('ms')} ms = {dit.get('tflops')} TFLOP/s = {100 * dit.get('share_of_matmul', 0):.0f}% "
        f"of the matmul rate"
    )
    print()
    print("| card | setting | path | time s | ratio vs plain | peak GiB | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in bench.rows:
        extra = []
        if r.get("psnr_vs_exact_db") is not None:
            extra.append(f"PSNR vs exact {r['psnr_vs_exact_db']} dB")
        if r.get("psnr_vs_plain_db") is not None:
            extra.append(f"PSNR vs plain {r['psnr_vs_plain_db']} dB")
        if r.get("full_forwards"):
            extra.append(f"full forwards {r['full_forwards']}")
        note = "; ".join([r["note"]] * bool(r["note"]) + extra)
        ratio = r.get("ratio", "1.00" if r["path"] == "plain" else "")
        print(
            f"| {bench.card} | {r['setting']} | {r['path']} | {r['time_s']:.2f} | {ratio} | {r['peak_gib']} | {note} |"
        )
    verdicts = goals(bench)
    bench.result["goals"] = verdicts
    print()
    for g, v in verdicts.items():
        print(f"goal {g}: {v}")
    if bench.result["errors"]:
        print(f"errors/skips: {json.dumps(bench.result['errors'])[:2000]}")
    bench.save()


def goals(bench: Bench) -> dict:
    def ratio(setting, path_prefix):
        rs = [r for r in bench.rows if r["setting"].startswith(setting) and r["path"].startswith(path_prefix)]
        return max((r.get("ratio") or 0) for r in rs) if rs else None

    dit = bench.result.get("dit_forward_compiled", {}).get("720p batch 2", {})
    out = {}
    for label, setting, path, target in (
        ("preview exact >= 1.6x", "preview", "project exact", 1.6),
        ("official exact >= 1.2x", "official", "project exact", 1.2),
        ("preview fast >= 2.5x", "preview", "project fast", 2.5),
        ("official fast >= 2x", "official", "project fast", 2.0),
    ):
        r = ratio(setting, path)
        out[label] = "not measured" if r is None else f"{r}x {'met' if r >= target else 'MISSED'}"
    share = dit.get("share_of_matmul")
    out["DiT >= 70% of bf16 matmul at 720p"] = (
        "not measured" if share is None else f"{100 * share:.0f}% {'met' if share >= 0.7 else 'MISSED'}"
    )
    return out
