"""Integration tests use the session's running app (tests/conftest.py, tests/helpers/app.py)
and, for load and failures, a second app (tests/helpers/load_app.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.load_app import LOAD_APP, LOAD_GATE, deploy_load_app


@pytest.fixture(scope="session")
def load_redis(tmp_path_factory):
    """The load app's own redis-server: failure tests stop and start it."""
    from tests.helpers.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("load-redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def load_gate(serve_url):
    """The load app's step gate (open; `gate` below is how a test uses it)."""
    from tests.helpers.gate import Gate

    return Gate(LOAD_GATE)


@pytest.fixture(scope="session")
def load_url(serve_url, data_dir, load_redis, load_gate):
    from ray import serve

    deploy_load_app(data_dir, load_redis.url, f"/{LOAD_APP}")
    yield f"{serve_url}/{LOAD_APP}"
    serve.delete(LOAD_APP)


@pytest.fixture
def http(load_url):
    with httpx.Client(base_url=load_url, timeout=60) as c:
        yield c


@pytest.fixture
def gate(load_gate, load_url):
    """The load app's step gate, open again after the test whatever it left it as (a test that fails
    with the gate closed would otherwise hold every later test's jobs)."""
    yield load_gate
    load_gate.open()
