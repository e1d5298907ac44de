"""Gateway settings that come from the environment, and the deployment's wiring without Ray."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from serve_app.api.gateway_app import GatewayHandles, GatewaySettings, GatewayStores, build_gateway, webhook_config
from serve_app.config import ServiceArgs
from tests.helpers.fakes import FakeGenerator


def test_no_secret_means_webhooks_off_not_a_failed_start(monkeypatch):
    monkeypatch.delenv("WAN_SERVE_WEBHOOK_SECRET", raising=False)
    assert webhook_config(ServiceArgs()).enabled is False


def test_secret_turns_webhooks_on(monkeypatch):
    monkeypatch.setenv("WAN_SERVE_WEBHOOK_SECRET", "s3cret")
    config = webhook_config(ServiceArgs(webhook_allowed_hosts=["hooks.example.com"]))
    assert config.enabled and config.allowed_hosts == ("hooks.example.com",)


def test_settings_take_the_admin_key_and_webhook_secret_from_the_environment_given():
    env = {"WAN_SERVE_ADMIN_KEY": "admin-0123456789abcdef", "WAN_SERVE_WEBHOOK_SECRET": "s3cret"}
    settings = GatewaySettings.load(ServiceArgs(), env, replica_id="gateway-1")
    assert settings.admin_key == "admin-0123456789abcdef" and settings.webhooks.enabled
    assert settings.replica_id == "gateway-1" and settings.profile.name == "tiny"
    assert [t.name for t in settings.tiers.tiers] == ["full", "reduced", "minimal"]
    assert GatewaySettings.load(ServiceArgs(), {}).admin_key == ""


def test_the_deployment_wiring_serves_and_closes_without_ray(tmp_path):
    settings = GatewaySettings.load(ServiceArgs(data_dir=str(tmp_path)), {}, replica_id="gateway-1")
    gateway = build_gateway(settings, GatewayHandles(generator=FakeGenerator()), GatewayStores.open(settings))
    with TestClient(gateway.app) as client:
        response = client.get("/healthz")
        assert client.get("/v1/cache/stats").status_code == 403  # no admin key, no admin API key
    health = response.json()
    assert response.status_code == 200 and health["access"]["auth"] == "off" and health["load"]["tier"] == "full"
    assert gateway.runner.owner == "gateway-1" and gateway.runner.eta is not None
    asyncio.run(gateway.close())
