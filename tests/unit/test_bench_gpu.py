"""bench/bench_gpu.py off the card: its command line, and the arithmetic its table is read with.

The sections themselves need the 5B model on a GPU (or minutes of `--smoke`
on a CPU); what is checked here is what a split or a move could break without
a card: every section module imports, the CLI is the one docs/performance.md
quotes.
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
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=PROJECT_ROOT).stdout
    for option in ("--profile", "--data-dir", "--budget-s", "--attention", "--skip", "--smoke", "--fbc", "--fp8"):
        assert option in out
    # The budget and the section list must be readable before a model (and torch) is loaded.
    assert out.rstrip().endswith("no torch"), out[-300:]
