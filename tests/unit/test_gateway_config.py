"""Gateway settings that come from the environment."""

from __future__ import annotations

from serve_app.api.gateway_app import webhook_config
from serve_app.config import ServiceArgs


def test_no_secret_means_webhooks_off_not_a_failed_start(monkeypatch):
    monkeypatch.delenv("WAN_SERVE_WEBHOOK_SECRET", raising=False)
    assert webhook_config(ServiceArgs()).enabled is False


def test_secret_turns_webhooks_on(monkeypatch):
    monkeypatch.setenv("WAN_SERVE_WEBHOOK_SECRET", "s3cret")
    config = webhook_config(ServiceArgs(webhook_allowed_hosts=["hooks.example.com"]))
    assert config.enabled and config.allowed_hosts == ("hooks.example.com",)
