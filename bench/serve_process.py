"""`serve run CONFIG` as a user starts it, in a subprocess: for bench/gpu_e2e.py and tests/gpu."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def ray_cli(*argv: str) -> None:
    """`ray ...` through this interpreter (the GPU host has no `ray` script on PATH)."""
    subprocess.run(
        [sys.executable, "-c", "from ray.scripts.scripts import main; main()", *argv],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )


class ServeRun:
    """`serve run CONFIG` in a subprocess, as the README starts it; logs to a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        ray_cli("stop", "--force")  # a clean Ray: nothing left from an earlier run
        self.log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run", str(self.config)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> float:
        """Ctrl-C, as a user stops it; seconds until it exited."""
        started = time.perf_counter()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        ray_cli("stop", "--force")
        self.log.close()
        return time.perf_counter() - started


def write_config(source: Path, data_dir: Path, port: int, overrides: dict[str, Any]) -> Path:
    """The shipped config with only data_dir, the port and `overrides` (args) changed."""
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {})["port"] = port
    app = config["applications"][0]
    app["args"] = {**app["args"], **overrides, "data_dir": str(data_dir)}
    path = data_dir.parent / f"{source.stem}-e2e.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def kill_replicas(app: str, deployments: tuple[str, ...]) -> int:
    """ray.kill every replica of these deployments of `app`, as a crash would (Serve starts
    new ones); how many. Needs a driver connected to the cluster."""
    import ray

    prefixes = tuple(f"SERVE_REPLICA::{app}#{name}#" for name in deployments)
    killed = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(prefixes):
            try:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
                killed += 1
            except ValueError:
                pass  # already gone
    return killed
