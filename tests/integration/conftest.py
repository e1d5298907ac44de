"""One local Ray cluster and one running Serve app for the whole session.

CPU only, tiny model, one replica per stage: the real graph over real HTTP.
Timing knobs are shrunk (job lease, dispatch interval, webhook backoff) so
recovery paths run in seconds.
"""

from __future__ import annotations

import socket

import httpx
import pytest

pytestmark = pytest.mark.integration

APP_NAME = "video"
WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tz"  # base64 of a test secret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    )
    base.update(overrides)
    return ServiceArgs(**base)


def deploy(args) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(args), name=APP_NAME, route_prefix="/")


@pytest.fixture(scope="session")
def serve_url(data_dir):
    import ray
    from ray import serve

    port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"WAN_SERVE_WEBHOOK_SECRET": WEBHOOK_SECRET}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(app_args(data_dir))
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


@pytest.fixture
def denoiser_stats(serve_url):
    from ray import serve

    handle = serve.get_deployment_handle("Denoiser", app_name=APP_NAME)

    def stats() -> dict:
        return handle.stats.remote().result()

    return stats
