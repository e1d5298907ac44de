"""Issue 7: a two-node Ray cluster on one host loses its worker node mid-job; the job finishes on the head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_lost_worker_node_mid_job_the_job_finishes_on_the_head(data_dir):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.node_loss", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"scenario failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    outcome = json.loads(lines[-1])
    assert outcome["denoiser_nodes_before"] == [outcome["worker"]], outcome
    assert outcome["status"] == "completed", outcome
    assert outcome["denoiser_nodes_after"] == [outcome["head"]], outcome
    assert "retry" in outcome["events"] and outcome["events"].count("completed") == 1, outcome
