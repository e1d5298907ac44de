"""bench/bench_gpu.py off the card: its command line, and the arithmetic its table is read with.

The sections themselves need the 5B model on a GPU (or minutes of `--smoke`
on a CPU); what is checked here is what a split or a move could break without
a card: every section module imports, the CLI keeps its options, and the DiT's
FLOP count (what its share of the matmul rate is read in) keeps its numbers.
"""

from __future__ import annotations

import subprocess
import sys

from serve_app.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "bench" / "bench_gpu.py"


def test_help_lists_the_options_and_loads_no_torch():
    # --help parses after every section module is imported: a broken import fails here.
    code = (
        "import runpy, sys; sys.argv = [sys.argv[0], '--help']\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=PROJECT_ROOT
    ).stdout
    for option in ("--profile", "--data-dir", "--budget-s", "--attention", "--skip", "--smoke", "--fbc", "--fp8"):
        assert option in out
    # The budget and the section list must be readable before a model (and torch) is loaded.
    assert out.rstrip().endswith("no torch"), out[-300:]


def _config_5b():
    from types import SimpleNamespace

    from serve_app.pipeline.architecture import TRANSFORMER_5B

    return SimpleNamespace(**TRANSFORMER_5B)


def test_dit_flops_gives_the_tflop_recorded_on_the_h100():
    # The committed result, whose shares docs/performance.md quotes: the count
    # must not move with its code, or old and new shares stop comparing.
    import json

    from bench.gpu_speed.dit import dit_flops

    recorded = json.loads((PROJECT_ROOT / "bench/results/gpu-nvidia-h100-80gb-hbm3.json").read_text())
    rows = recorded["dit_forward_compiled"]
    assert set(rows) == {"720p batch 1", "720p batch 2", "preview batch 1", "preview batch 2"}
    for label, row in rows.items():
        batch = int(label.rsplit(" ", 1)[1])
        assert round(dit_flops(_config_5b(), batch, row["tokens"], 512) / 1e12, 1) == row["tflop"], label


def test_dit_flops_agrees_with_the_design_rule_of_thumb():
    # The design notes' model facts: about 8.68 GFLOP per token per forward plus
    # 4*N^2*3072*30 for self-attention; the rest (text cross-attention,
    # embedders) is about 1% at 720p.
    from bench.gpu_speed.dit import dit_flops

    tokens = 31 * 22 * 40  # 1280x704x121: (1 + 120/4) * (704/32) * (1280/32)
    rule = 8.68e9 * tokens + 4 * tokens**2 * 3072 * 30
    assert abs(dit_flops(_config_5b(), 1, tokens, 512) / rule - 1) < 0.02
    assert dit_flops(_config_5b(), 2, tokens, 512) == 2 * dit_flops(_config_5b(), 1, tokens, 512)
