"""An app for the denoiser's autoscaling on the gateways' figure (issue 14), deployed as a serve config is.

Two gateway replicas with a fixed count, a denoiser that scales on queue
depth from zero, and the application-level policy of serve_config.yaml,
which Ray 2.60 takes only from a config (`serve run`/`serve deploy`), never
from `serve.run(app)`. The app has its own SQLite job store, and its
gateways look for orphaned jobs once an hour: a job the test writes into
the store stays undispatched, so nothing reaches the denoiser and only the
gateways' report can start one.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.policy.autoscaling import APPLICATION_POLICY

AUTOSCALE_APP = "autoscale"


def autoscale_app_args(data_dir, store_path: Path):
    from tests.helpers.app import app_args

    return app_args(
        data_dir,
        job_store=f"sqlite://{store_path}",
        dispatch_interval_s=3600.0,
        stages={
            "gateway": {"num_replicas": 2, "max_ongoing_requests": 64},
            "denoiser": {
                "max_ongoing_requests": 1,
                "autoscaling": {
                    "policy": "queue_depth",
                    "min_replicas": 0,
                    "max_replicas": 2,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 0,
                    "downscale_delay_s": 1,
                    "downscale_to_zero_delay_s": 1,
                    "look_back_period_s": 1,
                },
            },
        },
    )


def deploy_from_config(name: str, route_prefix: str, args, deployments: list[dict] | None = None) -> None:
    """What `serve deploy` does with a config holding this app (and the apps deployed from
    configs before, which a config without them would delete). `deployments`: the app's
    `deployments:` entries (Ray Serve options and user_configs per deployment)."""
    import ray
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

    # The client `serve run CONFIG` uses; the REST API would need the dashboard, which tests leave off.
    client = _get_global_client()
    details = ServeInstanceDetails(**client.get_serve_details())
    others = [
        application.deployed_app_config.model_dump(exclude_unset=True)
        for other, application in details.applications.items()
        if other != name and application.deployed_app_config is not None
    ]
    app = {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "serve_app.app:build_app",
        "autoscaling_policy": {"policy_function": APPLICATION_POLICY},
        "args": args.model_dump(mode="json", exclude_unset=True),
        # serve.run passes the driver's (the test env vars: metric push intervals); a config names its own.
        "runtime_env": dict(ray.get_runtime_context().runtime_env),
        **({"deployments": deployments} if deployments else {}),
    }
    client.deploy_apps(ServeDeploySchema(applications=[*others, app]))


def replicas(app: str, deployment: str) -> tuple[int, str]:
    """(running replicas, deployment status) as Serve reports them."""
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    running = sum(n for state, n in status.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")
    return running, str(getattr(status.status, "value", status.status))


def app_status(app: str) -> str | None:
    from ray import serve

    found = serve.status().applications.get(app)
    return None if found is None else str(getattr(found.status, "value", found.status))
