"""The test session's running app: settings, deploy, and the constants tests check against.

CPU only, tiny model, one replica per stage: the real graph over real HTTP.
Timing knobs are shrunk (job lease, dispatch interval, webhook backoff) so
recovery paths run in seconds.
"""

from __future__ import annotations

import socket

APP_NAME = "video"
WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz"  # base64 of a test secret
ADMIN_KEY = "test-admin-key-0123456789"  # at least 16 characters, as the gateway requires


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = free_port()


def app_args(data_dir, **overrides):
    from serve_app.config import ServiceArgs

    base = dict(
        data_dir=str(data_dir),
        default_deadline_s=30,
        max_deadline_s=120,
        job_lease_s=2.0,
        dispatch_interval_s=0.2,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_allow_http=True,
        webhook_backoff_initial_s=0.1,
        webhook_max_attempts=4,
        # This app tests the graph and the job machinery, including what happens
        # when a deadline passes mid-run, which admission would refuse up front.
        # Admission and tiers have their own app (tests/integration/test_load.py).
        admission={"enabled": False},
    )
    base.update(overrides)
    return ServiceArgs(**base)


def deploy(args) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(args), name=APP_NAME, route_prefix="/")


def start_cluster_and_app(data_dir) -> str:
    import ray
    from ray import serve

    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
        runtime_env={
            "env_vars": {
                "WAN_SERVE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "WAN_SERVE_ADMIN_KEY": ADMIN_KEY,
                # Autoscaling reacts within a second or two instead of Ray's default 10 s reports.
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
            }
        },
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(app_args(data_dir))
    return f"http://127.0.0.1:{port}"


def stop_cluster() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def stats_of(deployment: str):
    from ray import serve

    def stats() -> dict:
        # Looked up per call: a redeploy (recovery tests) replaces the replicas.
        return serve.get_deployment_handle(deployment, app_name=APP_NAME).stats.remote().result()

    return stats
