"""The multi-GPU denoiser on the CPU (issue 17): a 2-rank ParallelDenoiser (CPU bundles, gloo, the
tiny model) in its own app beside the session's, large requests routed to it and small ones to
the Denoiser, and a killed rank: the replica fails its health check, Ray Serve replaces it, and
the job started before resumes from its loop checkpoint on the new replica.

Jobs are held mid-flight at a step gate (tests/helpers/gate.py): on the multi-GPU replica rank 0
waits there (deployments/parallel_ranks.py), and the other rank waits for it in the next collective.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from deployments.parallel_denoiser import RANK_NAME_PREFIX
from tests.helpers.load_app import wait_for

pytestmark = pytest.mark.integration

APP = "parallel"
GATE = "parallel-step-gate"
CHECKPOINT_EVERY_S = 0.4
THRESHOLD = 32  # latent tokens
SMALL = {"width": 64, "height": 64, "num_frames": 9}  # 3 x 2 x 2 = 12 latent tokens
LARGE = {"width": 128, "height": 128, "num_frames": 9}  # 3 x 4 x 4 = 48
JOB = {"fps": 8, "num_inference_steps": 8, "guidance_scale": 5.0, "cache": False, "quality": "exact"}


@pytest.fixture(scope="module")
def gate(serve_url):
    from tests.helpers.gate import Gate

    return Gate(GATE)


@pytest.fixture(scope="module")
def parallel_url(serve_url, data_dir, tmp_path_factory, gate):
    from ray import serve

    from serve_app.app import build_app
    from tests.helpers.app import app_args

    own = tmp_path_factory.mktemp("parallel-app")
    args = app_args(
        data_dir,
        # Its own job store: the session app's dispatcher must not take these jobs (it has no ranks).
        job_store=f"sqlite:///{own / 'jobs.sqlite3'}",
        cache_enabled=False,
        job_max_attempts=4,
        checkpoint_every_s=CHECKPOINT_EVERY_S,
        faults={"step_gate": GATE},
        # Failed checks every 0.5 s: Ray replaces a replica after three.
        health={"check_period_s": 0.5, "check_timeout_s": 5},
        stages={
            "parallel_denoiser": {
                "gpus": 2,
                "gpu_share": 0,  # CPU ranks, gloo
                "rank_cpus": 0.1,
                "num_cpus": 0.1,
                "min_latent_tokens": THRESHOLD,
                "collective_timeout_s": 60,
                "ping_timeout_s": 2,
                "progress_poll_s": 0.05,
            }
        },
    )
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    yield f"{serve_url}/{APP}"
    serve.delete(APP)


@pytest.fixture
def http(parallel_url):
    with httpx.Client(base_url=parallel_url, timeout=60) as client:
        yield client


def stats(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=APP).stats.remote().result()


def submit(http, prompt: str, shape: dict) -> str:
    response = http.post("/v1/videos", json={"prompt": prompt, **shape, **JOB}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished(http, video_id: str, timeout_s: float = 120) -> dict:
    def done():
        video = http.get(f"/v1/videos/{video_id}").json()
        return video if video["status"] in ("completed", "failed") else None

    return wait_for(done, timeout_s, f"video {video_id} to finish")


def events_of(http, video_id: str) -> list[dict]:
    with http.stream("GET", f"/v1/videos/{video_id}/events") as response:
        assert response.status_code == 200
        return [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line.startswith("data: ")]


def test_a_large_request_is_served_by_the_parallel_denoiser_and_a_small_one_by_the_denoiser(http):
    before_parallel = stats("ParallelDenoiser")["outcomes"].get("completed", 0)
    before_single = stats("Denoiser")["outcomes"].get("completed", 0)

    large = finished(http, submit(http, "a lighthouse, large", LARGE))
    assert large["status"] == "completed", large
    assert large["size"] == "128x128"
    after = stats("ParallelDenoiser")
    assert after["outcomes"]["completed"] == before_parallel + 1
    assert after["last_run"]["total_steps"] == JOB["num_inference_steps"] and after["ranks"] == 2
    assert stats("Denoiser")["outcomes"].get("completed", 0) == before_single
    content = http.get(f"/v1/videos/{large['id']}/content")
    assert content.status_code == 200 and content.content[4:8] == b"ftyp"  # the mp4 rank 0 wrote

    small = finished(http, submit(http, "a lighthouse, small", SMALL))
    assert small["status"] == "completed", small
    assert stats("Denoiser")["outcomes"]["completed"] == before_single + 1
    assert stats("ParallelDenoiser")["outcomes"]["completed"] == before_parallel + 1

    # /healthz shows both denoisers: the parallel one's ranks and its own queue.
    health = http.get("/healthz").json()
    assert health["stages"]["parallel_denoiser"]["ok"], health["stages"]
    assert health["stages"]["parallel_denoiser"]["replica"]["device"] == "2 ranks (gloo)"


def rank_actors() -> dict[str, str]:
    """The live rank actors of this app's ParallelDenoiser replica: name -> namespace. Found by
    name, not through the deployment: while it runs a job (max_ongoing_requests 1) a call waits."""
    import ray

    prefix = f"{RANK_NAME_PREFIX}{APP}#"
    return {
        a["name"]: a["namespace"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(prefix)
    }


def kill(name: str, namespace: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


def test_a_killed_rank_gets_the_replica_replaced_and_its_job_resumes_from_the_checkpoint(http, gate, data_dir):
    old_ranks = rank_actors()
    assert set(old_ranks) == set(stats("ParallelDenoiser")["rank_actors"]) and len(old_ranks) == 2
    with gate.closed():
        video_id = submit(http, "a lighthouse through a lost rank", LARGE)
        gate.wait_held(1, step=1)
        gate.release(3)
        gate.wait_held(1, step=4)
        # A checkpoint is saved at a step boundary once CHECKPOINT_EVERY_S has passed since the last
        # save: held at step 4 that long, rank 0 saves step 4 as it goes on, before step 5.
        time.sleep(CHECKPOINT_EVERY_S)
        gate.release(1)
        gate.wait_held(1, step=5)
        assert (data_dir / "checkpoints" / f"{video_id}.pt").exists()
        [rank_1] = [name for name in old_ranks if name.endswith("#1")]
        kill(rank_1, old_ranks[rank_1])
        # The replica kills its other ranks once one is lost (they could only fail in their next
        # collective); rank 0, parked at the gate, goes with them.
        wait_for(lambda: not set(rank_actors()) & set(old_ranks), 60, "the lost replica's ranks to go")
        # Its wait at step 5 stays parked (a wait from an actor that died): let it go, and hold the
        # rerun at the step it restores (its first progress report is that step).
        gate.open()
        gate.close()
        (held,) = gate.wait_held(1, timeout_s=120)
        assert held["step"] == 4, held  # the rerun restored step 4, on a new replica
        # Let it go only once the job shows that step (4 of 8: 50%), so its first progress event is it.
        wait_for(lambda: http.get(f"/v1/videos/{video_id}").json()["progress"] == 50, 60, "step 4 reported")
        assert len(rank_actors()) == 2 and set(rank_actors()).isdisjoint(old_ranks)  # a new replica's ranks
    video = finished(http, video_id)
    assert video["status"] == "completed", video
    events = events_of(http, video_id)
    types = [e["type"] for e in events]
    retry = types.index("retry")
    assert types.count("completed") == 1 and types.count("retry") == 1, types
    before = [e["step"] for e in events[:retry] if e["type"] == "progress"]
    after = [e["step"] for e in events[retry:] if e["type"] == "progress"]
    assert max(before) == 5 and after[0] == 4 and after[-1] == JOB["num_inference_steps"], (before, after)
    replaced = stats("ParallelDenoiser")
    assert replaced["outcomes"] == {"completed": 1, "resumed": 1}, replaced
