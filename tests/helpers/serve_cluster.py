"""The production topology of configs/serve_cluster.yaml on one host, and a node lost mid-job.

    python -m tests.helpers.serve_cluster WORK_DIR RAY_TEMP_DIR    # prints one JSON line: what happened

Run as its own process by tests/integration/test_serve_cluster.py (one process
joins one Ray cluster, and pytest's may be in the session's). Everything is
started the way docs/ray-cluster.md tells an operator to:

- Redis (tests/helpers/redis_server.py) and an S3 server (moto) on loopback;
- `ray start --head` and `ray start --address` as two nodes of one cluster,
  each `--block`ed in its own subprocess, every port named (another cluster,
  the test session's, may hold Ray's defaults); the worker node's proxy gets
  its own port through RAY_SERVE_WORKER_PROXY_HTTP_PORT;
- `serve deploy` of configs/serve_cluster.yaml through the head's dashboard,
  with only its ports, folders and test knobs swapped (`cluster_config`).

Then two jobs are held at denoising step HOLD_AT (a step gate on the head),
one in each node's denoiser (one loop per replica, one replica per node), so
one of them is certainly on the worker; the worker's raylet is SIGKILLed (a
crashed node: `ray start --block` then kills the rest of that node); the gate
opens; both jobs must finish, the lost one resumed from its checkpoint on the
head, and a new request through the head's proxy must work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil  # accelerate's dependency (and Ray's), so always there
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's `ray` and `serve`
CONFIG = ROOT / "configs" / "serve_cluster.yaml"
APP = "video"
BUCKET = "wan-video"
GATE = "serve-cluster-step-gate"
HOLD_AT = 3  # held here, the jobs have checkpoints of step HOLD_AT - 1
START_TIMEOUT_S = 120
DEPLOY_TIMEOUT_S = 300
JOB = {
    "prompt": "a lighthouse across a lost node",
    "width": 64,
    "height": 64,
    "num_frames": 9,
    "fps": 8,
    "num_inference_steps": 8,
    "cache": False,
}
ASYNC = {"Prefer": "respond-async"}
WAIT = {"Prefer": "wait=60"}  # the finished video, whatever the estimate
POLL_S = 0.2  # polling processes and HTTP we do not control; no event to wait on


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held open until chosen, so no two are the same)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def wait_until(check, timeout_s: float, what: str):
    give_up = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > give_up:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)
    return result


class RayNode:
    """One `ray start --block` process: SIGTERM stops exactly this node, SIGKILL of its raylet crashes it."""

    PORTS = 6  # each node's own: two nodes on one host may not share any

    def __init__(self, args: list[str], node_ports: list[int], env: dict[str, str], log: Path) -> None:
        self.log = log
        command = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={node_ports[0]}",
            f"--dashboard-agent-grpc-port={node_ports[1]}",
            f"--runtime-env-agent-port={node_ports[2]}",
            f"--metrics-export-port={node_ports[3]}",
            f"--object-manager-port={node_ports[4]}",
            f"--node-manager-port={node_ports[5]}",
            "--num-cpus=2",
            "--disable-usage-stats",
            *args,
        ]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{tail(self.log)}")

    def raylet(self) -> psutil.Process:
        (raylet,) = [p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == "raylet"]
        return raylet

    def stop(self) -> None:
        # `ray start --block` tears down the processes it started on SIGTERM.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def cluster_config(http_port: int, data_dir: Path, redis_url: str, **test_args: Any) -> dict[str, Any]:
    """configs/serve_cluster.yaml with this host's ports and folders, and the test's knobs in `args`."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = http_port
    (app,) = config["applications"]
    args = app["args"]
    base = redis_url.rsplit("/", 1)[0]
    for field in ("job_store", "cache_store"):
        args[field] = f"{base}/{args[field].rsplit('/', 1)[1]}"
    args["access"]["store"] = f"{base}/{args['access']['store'].rsplit('/', 1)[1]}"
    args["data_dir"] = str(data_dir)
    args["checkpoint_dir"] = str(data_dir / "checkpoints")
    args.update(test_args)
    return config


def proxy_ports(dashboard: str, ports: list[int]) -> dict[int, str]:
    """Which node's proxy listens on each port (by the listening process's pid). The state API is
    given the dashboard: it would refuse to guess with another cluster (the test session's) about."""
    from ray.util.state import list_actors

    proxies = {
        a.pid: a.node_id
        for a in list_actors(dashboard, filters=[("class_name", "=", "ProxyActor"), ("state", "=", "ALIVE")], limit=100)
    }
    listening = {c.laddr.port: c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return {port: proxies.get(listening.get(port, -1), "") for port in ports}


def actor_nodes(dashboard: str, prefix: str) -> list[str]:
    from ray.util.state import list_actors

    alive = list_actors(dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
    return sorted(a.node_id for a in alive if a.name and a.name.startswith(f"SERVE_REPLICA::{APP}#{prefix}#"))


def wait_done(http: httpx.Client, video_id: str, timeout_s: float = 180) -> dict:
    def ended():
        video = http.get(f"/v1/videos/{video_id}").json()
        return video if video["status"] in ("completed", "failed") else None

    return wait_until(ended, timeout_s, f"job {video_id} to end")


def events(http: httpx.Client, video_id: str) -> list[dict]:
    stream = http.get(f"/v1/videos/{video_id}/events")
    return [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]


def main(work: Path, temp_dir: Path) -> dict[str, Any]:
    """`temp_dir`: Ray's, short (Ray puts unix sockets in it: a 107-byte path limit) and the
    caller's to remove (after the processes that write in it are surely gone)."""
    os.environ["RAY_AUTH_MODE"] = "token"  # this driver too; read when ray is first imported
    import ray
    from ray import serve

    from tests.helpers.gate import Gate
    from tests.helpers.redis_server import RedisServer
    from tests.helpers.s3 import moto_endpoint, s3_client

    data_dir = work / "shared-data"  # the folder both nodes see (one host)
    gcs, dashboard, client, head_http, worker_http, *node_ports = free_ports(5 + 2 * RayNode.PORTS)
    dashboard_url = f"http://127.0.0.1:{dashboard}"
    with ExitStack() as stack:
        redis = RedisServer(work / "redis")
        redis.start()
        stack.callback(redis.stop)
        endpoint = stack.enter_context(moto_endpoint())
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {
            **os.environ,
            # Token auth, as a new cluster turns on when ~/.ray/auth_token exists; every
            # client here (driver, `serve deploy`) then sends it (test_ray_job_batch.py).
            "RAY_AUTH_MODE": "token",
            "PYTHONPATH": str(ROOT),
            # The replicas' S3: from the nodes' environment, never from the serve config.
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            # A throwaway cluster need not drain for 30 s on SIGTERM.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            # The GCS declares a silent node dead after 3 missed 1 s health checks (Ray's defaults: longer).
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        head = RayNode(
            [
                "--head",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                f"--temp-dir={temp_dir}",
                '--resources={"head": 100}',
            ],
            node_ports[: RayNode.PORTS],
            env,
            work / "ray-head.log",
        )
        stack.callback(head.stop)

        def dashboard_up() -> bool:
            head.check_running()
            try:
                httpx.get(f"{dashboard_url}/api/version", timeout=2)  # any answer, 401 included
                return True
            except httpx.TransportError:
                return False

        wait_until(dashboard_up, START_TIMEOUT_S, "the head's dashboard")
        worker = RayNode(
            [f"--address=127.0.0.1:{gcs}"],
            node_ports[RayNode.PORTS :],
            {**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http)},
            work / "ray-worker.log",
        )
        stack.callback(worker.stop)

        ray.init(address=f"127.0.0.1:{gcs}", log_to_driver=False)
        stack.callback(ray.shutdown)

        def alive_nodes() -> list[str]:
            worker.check_running()
            return alive_node_ids()

        wait_until(lambda: len(alive_nodes()) == 2, START_TIMEOUT_S, "two alive nodes")
        head_id = ray.get_runtime_context().get_node_id()
        (worker_id,) = [n for n in alive_nodes() if n != head_id]
        gate = Gate(GATE, resources={"head": 1})  # on the head: it outlives the worker

        config = cluster_config(
            head_http,
            data_dir,
            redis.url,
            faults={"step_gate": GATE},
            # Saved at every step boundary: a job held at step k has step k - 1 on disk.
            checkpoint_every_s=0.001,
            dispatch_interval_s=0.2,
        )
        config_path = work / "serve_cluster.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        deployed = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config_path), "-a", dashboard_url],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if deployed.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}")

        def running() -> bool:
            head.check_running()
            worker.check_running()
            app = serve.status().applications.get(APP)
            if app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"app {app.status}: {app.message}")
            return app is not None and app.status == "RUNNING"

        wait_until(running, DEPLOY_TIMEOUT_S, "the app to be RUNNING")
        ports = wait_until(
            lambda: p if all((p := proxy_ports(dashboard_url, [head_http, worker_http])).values()) else None,
            60,
            "a proxy listening on each node's port",
        )
        placement = {name: actor_nodes(dashboard_url, name) for name in ("Gateway", "Denoiser", "VideoEncoder")}

        head_proxy = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{head_http}", timeout=60))
        worker_proxy = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{worker_http}", timeout=60))
        # Each proxy serves the app before anything is lost.
        before = {
            "head": head_proxy.post("/v1/videos", json={**JOB, "prompt": "through the head"}, headers=WAIT).json()[
                "status"
            ],
            "worker": worker_proxy.post(
                "/v1/videos", json={**JOB, "prompt": "through the worker"}, headers=WAIT
            ).json()["status"],
        }

        with gate.closed(from_step=HOLD_AT):  # opened once the worker is gone
            ids = [
                head_proxy.post("/v1/videos", json={**JOB, "prompt": f"held {n}"}, headers=ASYNC).json()["id"]
                for n in range(2)
            ]
            held = gate.wait_held(2, step=HOLD_AT, timeout_s=120)
            # The replica sends a step's progress just before it waits at the gate: wait for it
            # to reach the store, so the lost run's events end at HOLD_AT whenever the kill lands.
            shown = HOLD_AT * 100 // JOB["num_inference_steps"]
            for video_id in ids:
                wait_until(
                    lambda video_id=video_id: head_proxy.get(f"/v1/videos/{video_id}").json()["progress"] >= shown,
                    60,
                    f"job {video_id}'s step {HOLD_AT} in the store",
                )
            checkpoints_before = sorted(p.stem for p in (data_dir / "checkpoints").glob("*.pt"))
            raylet = worker.raylet()
            raylet.send_signal(signal.SIGKILL)  # the worker node crashes, mid-job
            lost_at = time.monotonic()
            wait_until(lambda: worker_id not in alive_node_ids(), 60, "the GCS to declare the worker dead")
            worker.process.wait(timeout=60)  # its `ray start --block` tore the rest of that node down
        videos = [wait_done(head_proxy, video_id) for video_id in ids]
        recovered_in_s = round(time.monotonic() - lost_at, 1)
        after = head_proxy.post("/v1/videos", json={**JOB, "prompt": "after the loss"}, headers=WAIT)
        content = head_proxy.get(f"/v1/videos/{ids[0]}/content")
        video_bytes = httpx.get(content.headers["location"], timeout=30).content if content.is_redirect else b""
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        return {
            "head": head_id,
            "worker": worker_id,
            "proxies": {str(port): node for port, node in ports.items()},
            "head_port": head_http,
            "worker_port": worker_http,
            "placement": placement,
            "before": before,
            "held": held,
            "checkpoints_before": checkpoints_before,
            "ids": ids,
            "statuses": [v["status"] for v in videos],
            "errors": [v.get("error") for v in videos],
            "events": [events(head_proxy, video_id) for video_id in ids],
            "denoisers_after": actor_nodes(dashboard_url, "Denoiser"),
            "serve_after": {
                name: {"status": str(d.status), "replicas": {str(k): v for k, v in d.replica_states.items()}}
                for name, d in serve.status().applications[APP].deployments.items()
                if name in ("Gateway", "Denoiser")
            },
            "after": {"code": after.status_code, "status": after.json().get("status")},
            "content": {"code": content.status_code, "mp4": video_bytes[4:8] == b"ftyp"},
            "s3_keys": keys,
            "redis_jobs": sorted(k.decode() for k in redis_client(redis.url).scan_iter(match="*:job:*")),
            "recovered_in_s": recovered_in_s,
        }


def alive_node_ids() -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def redis_client(url: str):
    import redis

    return redis.Redis.from_url(url)


if __name__ == "__main__":
    # A test that gives up sends SIGTERM: unwind, so both nodes, Redis and moto stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
