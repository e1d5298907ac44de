"""Live retuning through Ray (issue 18, item 1): a `serve deploy` that changes only user_configs
retunes the running replicas; the models stay loaded.

An app of its own, deployed the way `serve deploy` deploys a config (tests/helpers/autoscale_app.py:
the client `serve deploy` uses, with `deployments:` entries), its live settings in the Gateway's
and the Denoiser's user_configs. A second deploy changes the tiers, the rate limit and the
progress interval: the next request runs at the new tier and meets the new limit, and no
replica was replaced (the Denoiser's actor is the same one). A third deploy with a bad
user_config fails with the field named, and the model replicas are still the same ones.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.autoscale_app import app_status, deploy_from_config
from tests.helpers.load_app import wait_for

pytestmark = pytest.mark.integration

RETUNE_APP = "retune"
# 8 steps x 9 frames: the `full` tier of configs/tiers.yaml keeps it; CAPPED lowers it to 2 steps.
JOB = {"prompt": "a boat", "width": 64, "height": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 8}
CAPPED = [{"name": "capped", "max_load": 1.0, "max_steps": 2}]
MODEL_DEPLOYMENTS = ("PromptEncoder", "Denoiser", "VideoEncoder")


def entries(gateway: dict, denoiser: dict) -> list[dict]:
    return [{"name": "Gateway", "user_config": gateway}, {"name": "Denoiser", "user_config": denoiser}]


# Admission on, keyless traffic limited as one client: both are live settings, set here, not in args.
BEFORE = entries(
    {"admission": {"enabled": True, "refresh_s": 0.2}, "access": {"limit_anonymous": True, "burst": 50}},
    {"progress_interval_s": 0},
)
AFTER = entries(
    {
        "admission": {"enabled": True, "refresh_s": 0.2, "tiers": CAPPED},
        "access": {"limit_anonymous": True, "burst": 1, "rate_per_s": 0.001},
    },
    {"progress_interval_s": 5},
)
BAD = entries({"admission": {"max_queue_per_replica": 0}}, {"progress_interval_s": 5})


def details():
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    return ServeInstanceDetails(**_get_global_client().get_serve_details()).applications[RETUNE_APP]


def replica_actors() -> dict[str, list[str]]:
    """Deployment -> the actor ids of its running replicas."""
    return {
        name: sorted(r.actor_id for r in deployment.replicas if str(getattr(r.state, "value", r.state)) == "RUNNING")
        for name, deployment in details().deployments.items()
    }


def deploy(args, deployments: list[dict], until: str) -> None:
    deploy_from_config(RETUNE_APP, f"/{RETUNE_APP}", args, deployments)
    # Ray marks the app DEPLOYING as it takes the config, and RUNNING once every replica has
    # taken its new user_config (reconfigure), so the next request meets the new settings.
    wait_for(lambda: app_status(RETUNE_APP) == until, 240, f"the retune app to be {until}")


@pytest.fixture(scope="module")
def retune_app(serve_url, data_dir, tmp_path_factory):
    from ray import serve

    from tests.helpers.app import app_args

    store = tmp_path_factory.mktemp("retune") / "jobs.sqlite3"
    args = app_args(data_dir, job_store=f"sqlite://{store}", cache_enabled=False)
    deploy(args, BEFORE, "RUNNING")
    yield args, f"{serve_url}/{RETUNE_APP}"
    serve.delete(RETUNE_APP)


@pytest.mark.timeout(600)
def test_a_deploy_of_new_user_configs_retunes_the_running_replicas(retune_app):
    args, url = retune_app
    with httpx.Client(base_url=url, timeout=60) as http:
        # Right after a deploy the gateway may still count the Denoiser's replica as starting
        # (replica states are polled), and admission then adds a cold start to every estimate
        # and refuses a 30 s request at once, as it should. Start once it counts it as serving.
        wait_for(
            lambda: http.get("/healthz").json()["load"]["work_ahead_s"] < 1.0, 120, "the gateway to see the Denoiser"
        )
        before = http.post("/v1/videos", json=JOB, headers={"Prefer": "wait=30"})
        assert before.status_code == 200, before.text
        assert (before.json()["tier"], before.json()["num_inference_steps"]) == ("full", 8)
        actors = replica_actors()
        assert all(len(actors[name]) == 1 for name in MODEL_DEPLOYMENTS), actors

        deploy(args, AFTER, "RUNNING")
        assert details().deployments["Gateway"].deployment_config.user_config == AFTER[0]["user_config"]

        # The next request: the new tier, and the new limit's one token.
        after = http.post("/v1/videos", json=JOB, headers={"Prefer": "wait=30"})
        assert after.status_code == 200, after.text
        assert (after.json()["tier"], after.json()["num_inference_steps"]) == ("capped", 2)
        limited = http.post("/v1/videos", json=JOB)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limited" and "burst 1" in limited.json()["error"]["message"]
        assert http.get("/healthz").json()["load"]["tier"] == "capped"

    # Retuned in place: the same replicas, the Denoiser's (whose user_config changed too) included.
    assert replica_actors() == actors


@pytest.mark.timeout(600)
def test_a_bad_user_config_fails_the_deploy_with_the_field_named(retune_app):
    args, url = retune_app
    actors = replica_actors()
    deploy(args, BAD, "DEPLOY_FAILED")
    messages = " ".join(d.message for d in details().deployments.values())
    assert "'Gateway' is invalid: admission.max_queue_per_replica" in messages, messages
    # Only the Gateway took the bad config; the model replicas were never touched.
    assert {name: replica_actors()[name] for name in MODEL_DEPLOYMENTS} == {n: actors[n] for n in MODEL_DEPLOYMENTS}
    deploy(args, BEFORE, "RUNNING")
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/healthz").status_code == 200
