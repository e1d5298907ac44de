"""Shared fixtures: the tiny model's data directory, and one running app per session.

One local Ray cluster serves every test that needs the app (integration and
browser alike); it starts on first use and stops when the session ends.
"""

from __future__ import annotations

import httpx
import pytest

from serve_app.config import load_model_profile
from tests.helpers.app import start_cluster_and_app, stats_of, stop_cluster


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data directory per session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_profile():
    return load_model_profile("tiny")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session (tests use their own key prefixes or FLUSHDB)."""
    # Imported here: the GPU image runs tests/gpu without the redis client installed.
    from tests.helpers.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_url(data_dir):
    yield start_cluster_and_app(data_dir)
    stop_cluster()


@pytest.fixture
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


@pytest.fixture
def denoiser_stats(serve_url):
    return stats_of("Denoiser")


@pytest.fixture
def encoder_stats(serve_url):
    return stats_of("PromptEncoder")
