"""One local Ray cluster and one running Serve app for the whole session.

CPU only, tiny model, one replica per stage: the real graph over real HTTP.
"""

from __future__ import annotations

import socket

import httpx
import pytest

pytestmark = pytest.mark.integration

APP_NAME = "video"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_url(data_dir):
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import ServiceArgs

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = ServiceArgs(data_dir=str(data_dir), default_deadline_s=30, max_deadline_s=120)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
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
