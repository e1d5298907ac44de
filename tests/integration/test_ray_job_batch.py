"""Batch generation as a Ray job, the way docs/cli.md documents it:

    ray job submit --working-dir . -- python -m serve_app.batch prompts.jsonl --out DIR

The session cluster (tests/conftest.py) runs without the dashboard, and the
dashboard is what serves the Jobs API, so this module starts its own head
node with it: `ray start --head --block` in a subprocess, so that SIGTERM to
that one process stops exactly this cluster (`ray stop` would stop every Ray
cluster on the machine, the session's included). The app (tiny model) is
deployed into it from a second subprocess: one process joins one cluster,
and pytest's may already be in the session's.

Ray's token authentication: a new local cluster turns it on when a token
exists (~/.ray/auth_token) or RAY_AUTH_MODE=token, but a client given an
explicit address (ray.init(address=...), the Jobs SDK and CLI) sends the token
only when RAY_AUTH_MODE=token is set; unset, the deployer was refused
("Missing authorization header" in the GCS log). So every process here gets
RAY_AUTH_MODE=token: the head (which writes a token if there is none), the
deployer and the Jobs CLI agree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_app.video import decode_mp4

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's `ray` and `python`: the job's entrypoint finds them on PATH
# A head node with the dashboard takes ~8 s on two cores, the app ~16 s.
START_TIMEOUT_S = 120
DEPLOY_TIMEOUT_S = 300
JOB_TIMEOUT_S = 240

# Run in its own process, joined to the test cluster. Serve's actors are
# detached, so the app outlives this driver.
DEPLOY = """
import sys

import ray
from ray import serve

from serve_app.app import build_app
from tests.helpers.app import APP_NAME, app_args

gcs, port, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ray.init(address=gcs, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build_app(app_args(data_dir)), name=APP_NAME, route_prefix="/")
"""

ITEMS = [
    {
        "id": "kite",
        "prompt": "a red kite over a beach",
        "size": "64x64",
        "num_frames": 9,
        "num_inference_steps": 3,
        "fps": 8,
        "seed": 1,
    },
    {
        "id": "boat",
        "prompt": "a paper boat on a pond",
        "size": "96x64",
        "num_frames": 5,
        "num_inference_steps": 2,
        "fps": 8,
    },
    {
        "id": "tower",
        "prompt": "a clock tower at noon",
        "size": "64x96",
        "num_frames": 13,
        "num_inference_steps": 2,
        "fps": 12,
    },
]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held open until chosen, so no two are the same)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


@dataclass(frozen=True)
class JobsCluster:
    dashboard_url: str
    app_url: str
    env: dict[str, str]
    temp_dir: Path


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def jobs_cluster(tmp_path_factory):
    # Short and under /tmp: Ray puts unix sockets in here (107-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp"))
    data_dir = tmp_path_factory.mktemp("jobs-data")
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics, objects, nodes, client, http = free_ports(10)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),  # the deployer imports tests.helpers
        # On SIGTERM a head node first drains (30 s by default, for Serve
        # proxies during rolling upgrades); a throwaway test cluster need not.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    # Every port named: another cluster on this machine (the session's) holds Ray's defaults.
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--object-manager-port={objects}",
        f"--node-manager-port={nodes}",
        f"--ray-client-server-port={client}",
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    dashboard_url = f"http://127.0.0.1:{dashboard}"
    try:
        give_up = time.monotonic() + START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}:\n{_tail(log_path)}")
            try:
                # Any answer (401 included: token auth) means the dashboard is up.
                httpx.get(f"{dashboard_url}/api/version", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > give_up:
                    pytest.fail(f"no dashboard after {START_TIMEOUT_S} s:\n{_tail(log_path)}")
                time.sleep(0.5)  # polling a process we do not control; no event to wait on
        deployed = subprocess.run(
            [sys.executable, "-c", DEPLOY, f"127.0.0.1:{gcs}", str(http), str(data_dir)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_S,
        )
        if deployed.returncode != 0:
            pytest.fail(f"deploying the app failed:\n{(deployed.stdout + deployed.stderr)[-4000:]}")
        yield JobsCluster(dashboard_url, f"http://127.0.0.1:{http}", env, temp_dir)
    finally:
        # `ray start --block` tears down the processes it started on SIGTERM.
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_batch_as_a_ray_job_makes_every_video(jobs_cluster, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    out = tmp_path / "results"  # absolute: the job runs in a copy of the working dir

    submit = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        jobs_cluster.dashboard_url,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "serve_app.batch",
        str(prompts),
        "--out",
        str(out),
        "--url",
        jobs_cluster.app_url,
        "--concurrency",
        "2",
    ]
    done = subprocess.run(submit, cwd=REPO, env=jobs_cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    log = done.stdout + done.stderr
    # The CLI follows the job to its end and exits 1 unless it succeeded.
    assert done.returncode == 0, log[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-4000:]
    # The driver's own summary line, relayed through the job's log stream.
    assert f"{len(ITEMS)} completed, 0 failed, 0 skipped of {len(ITEMS)}" in log, log[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["completed"], summary["failed"]) == (len(ITEMS), len(ITEMS), 0)
    for item in ITEMS:
        width, height = map(int, item["size"].split("x"))
        frames = decode_mp4((out / f"{item['id']}.mp4").read_bytes())
        assert frames.shape == (item["num_frames"], height, width, 3), item["id"]
        assert frames.std() > 0, f"{item['id']}: every pixel the same"
        sidecar = json.loads((out / f"{item['id']}.json").read_text())
        assert sidecar["status"] == "completed" and sidecar["prompt"] == item["prompt"]
        assert (sidecar["width"], sidecar["height"], sidecar["num_frames"]) == (width, height, item["num_frames"])

    # What `--working-dir .` uploaded: the code, without the virtualenv, .git or data (.rayignore).
    packages = [
        p for p in jobs_cluster.temp_dir.glob("session_latest/runtime_resources/working_dir_files/*") if p.is_dir()
    ]
    assert len(packages) == 1, packages
    names = {p.name for p in packages[0].iterdir()}
    assert {"serve_app", "deployments", "configs"} <= names, names
    assert not names & {".venv", ".git", "data", ".devkit-cache", ".gpu_wheels"}, names
    size = sum(f.stat().st_size for f in packages[0].rglob("*") if f.is_file())
    assert size < 5 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
