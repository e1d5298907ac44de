"""WebhookConfig: described fields, safe defaults, the secret kept out of repr, and bad values refused, quoted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.webhooks import WebhookConfig


def test_every_config_field_has_a_description():
    for name, info in WebhookConfig.model_fields.items():
        assert info.description, name


def test_config_defaults_and_secret_not_in_repr():
    config = WebhookConfig(secret="s3cr3t-value")
    assert (config.enabled, config.allowed_hosts, config.max_attempts, config.allow_http) == (True, (), 5, False)
    assert (config.backoff_initial_s, config.backoff_max_s, config.timeout_s) == (1.0, 60.0, 10.0)
    assert "s3cr3t-value" not in repr(config)
    with pytest.raises(ValidationError):
        config.secret = "x"  # frozen


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({}, "secret must be non-empty"),
        ({"secret": "s", "extra": 1}, "Extra inputs"),
        ({"secret": "s", "allowed_hosts": ["10.0.0.1/8"]}, "10.0.0.1/8"),
        ({"secret": "s", "allowed_hosts": ["*"]}, "'*'"),
        ({"secret": "s", "allowed_hosts": ["a.*.com"]}, "a.*.com"),
        ({"secret": "s", "allowed_hosts": ["https://a.com"]}, "https://a.com"),
        ({"secret": "s", "allowed_hosts": ["a.com:443"]}, "a.com:443"),
        ({"secret": "s", "allowed_hosts": [""]}, "empty"),
        ({"secret": "s", "allowed_hosts": "a.com"}, "list"),
        ({"secret": "s", "backoff_initial_s": 10, "backoff_max_s": 5}, "backoff_max_s=5.0"),
        ({"secret": "s", "max_attempts": 0}, "max_attempts"),
        ({"secret": "s", "timeout_s": 0}, "timeout_s"),
        ({"secret": "whsec_!!notbase64!!"}, "not valid base64"),
    ],
)
def test_config_rejects(kwargs, fragment):
    with pytest.raises(ValidationError) as info:
        WebhookConfig(**kwargs)
    assert fragment in str(info.value)


def test_disabled_config_needs_no_secret():
    assert WebhookConfig(enabled=False).secret == ""
