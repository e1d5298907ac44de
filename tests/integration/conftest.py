"""Integration tests use the session's running app (tests/conftest.py, tests/helpers/app.py)
and, for load and failures, a second app (tests/helpers/load_app.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.load_app import LOAD_APP, deploy_load_app


@pytest.fixture(scope="session")
def load_redis(tmp_path_factory):
    """The load app's own redis-server: failure tests stop and start it."""
    from tests.helpers.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("load-redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def load_url(serve_url, data_dir, load_redis):
    from ray import serve

    deploy_load_app(data_dir, load_redis.url, f"/{LOAD_APP}")
    yield f"{serve_url}/{LOAD_APP}"
    serve.delete(LOAD_APP)


@pytest.fixture
def http(load_url):
    with httpx.Client(base_url=load_url, timeout=60) as c:
        yield c
