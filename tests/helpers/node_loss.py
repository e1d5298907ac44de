"""A two-node Ray cluster on one host loses its worker node mid-job; the job must finish on the head.

    python -m tests.helpers.node_loss DATA_DIR     # prints one JSON line: the outcome

Run as its own process by tests/integration/test_node_loss.py: a
`ray.cluster_utils.Cluster` cannot share a driver with the session's cluster.

Placement: every deployment but the denoiser is pinned to the head (custom
resource `head`). The denoiser needs one CPU; a placeholder actor holds the
head's only CPU while the app deploys, so the denoiser lands on the worker.
The placeholder then goes, leaving the head room for a replacement. The job
is held mid-denoising at a step gate (tests/helpers/gate.py, on the head) while
the worker goes, then let go.
"""

from __future__ import annotations

import json
import sys
import time

import httpx

GATE = "node-loss-step-gate"
JOB = {
    "prompt": "across a lost node",
    "width": 64,
    "height": 64,
    "num_frames": 9,
    "fps": 8,
    "num_inference_steps": 10,
    "cache": False,
}


def denoiser_nodes(app: str) -> list[str]:
    from ray.util.state import list_actors

    return [
        a.node_id
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if a.name and a.name.startswith(f"SERVE_REPLICA::{app}#Denoiser#")
    ]


def main(data_dir: str) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app.app import build_app
    from tests.helpers.app import app_args, free_port
    from tests.helpers.gate import Gate

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 100}})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        head_id = ray.get_runtime_context().get_node_id()

        @ray.remote(num_cpus=1, resources={"head": 1})
        class Placeholder:
            def ready(self) -> bool:
                return True

        placeholder = Placeholder.remote()
        ray.get(placeholder.ready.remote())
        gate = Gate(GATE, resources={"head": 1})  # on the head: it outlives the worker
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
        on_head = {"resources": {"head": 1}}
        args = app_args(
            data_dir,
            faults={"step_gate": GATE},
            job_max_attempts=3,
            stages={
                "gateway": on_head,
                "result_cache": on_head,
                "prompt_encoder": on_head,
                "video_encoder": on_head,
                "denoiser": {"num_cpus": 1, "max_ongoing_requests": 1},
            },
        )
        serve.run(build_app(args), name="video", route_prefix="/")
        first = denoiser_nodes("video")
        ray.kill(placeholder)  # the head now has a CPU for a replacement denoiser
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            with gate.closed():  # opened once the worker is gone: the rerun on the head goes through
                video_id = http.post("/v1/videos", json=JOB, headers={"Prefer": "respond-async"}).json()["id"]
                gate.wait_held(1, timeout_s=60)  # the job is mid-denoising, on the worker
                cluster.remove_node(worker)  # the worker node is gone, mid-job
                lost_at = time.monotonic()
            give_up = time.monotonic() + 180
            while (video := http.get(f"/v1/videos/{video_id}").json())["status"] not in ("completed", "failed"):
                assert time.monotonic() < give_up, "the job never ended"
                time.sleep(0.2)
            events = http.get(f"/v1/videos/{video_id}/events")
            types = [json.loads(line[6:])["type"] for line in events.text.splitlines() if line.startswith("data: ")]
        return {
            "head": head_id,
            "worker": worker.node_id,
            "denoiser_nodes_before": first,
            "denoiser_nodes_after": denoiser_nodes("video"),
            "status": video["status"],
            "error": video.get("error"),
            "events": types,
            "recovered_in_s": round(time.monotonic() - lost_at, 1),
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
