"""The in-process gateway of the HTTP tests, as pytest fixtures: import the ones a module uses.

`gateway` is the real gateway app over the module's `generator` fixture (a FakeGenerator
unless the module defines its own `generator`), with default settings, no cache, admission
or access control; `client` is its HTTP API (a TestClient). Modules that need other
settings define their own `gateway`.
"""

from __future__ import annotations

import pytest

from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import api_client, gateway_over


@pytest.fixture
def generator():
    return FakeGenerator()


@pytest.fixture
def gateway(tmp_path, generator):
    gateway = gateway_over(tmp_path, generator)
    yield gateway
    gateway.stores.jobs.close()


@pytest.fixture
def client(gateway):
    with api_client(gateway) as c:
        yield c
