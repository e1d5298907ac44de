"""Access config: fields described, strict and frozen; key entries and store URLs checked without echoing secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.access.config import AccessConfig, ApiKeyEntry
from serve_app.access.keys import hash_secret
from tests.helpers.access import ALICE, BOB


@pytest.mark.parametrize("model", [AccessConfig, ApiKeyEntry])
def test_every_field_is_described(model):
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert missing == []


def test_config_is_strict_and_frozen():
    with pytest.raises(ValidationError, match="extra"):
        AccessConfig(rate_limit=3)
    config = AccessConfig()
    with pytest.raises(ValidationError):
        config.burst = 3


def test_sha256_is_normalised_and_a_pasted_secret_is_refused_without_echo():
    digest = hash_secret(ALICE)
    assert ApiKeyEntry(id="a", sha256=digest.upper()).sha256 == digest
    with pytest.raises(ValidationError) as err:
        ApiKeyEntry(id="a", sha256=ALICE)
    assert "64 hex characters" in str(err.value) and ALICE not in str(err.value)


@pytest.mark.parametrize("key_id", ["", "has space", "a:b", "x" * 65, "anonymous"])
def test_bad_key_ids_are_refused(key_id):
    with pytest.raises(ValidationError, match="api_keys"):
        ApiKeyEntry(id=key_id, sha256=hash_secret(ALICE))


def test_duplicate_ids_and_secrets_are_refused():
    with pytest.raises(ValidationError, match="'a' appears twice"):
        AccessConfig(api_keys=[{"id": "a", "sha256": hash_secret(ALICE)}, {"id": "a", "sha256": hash_secret(BOB)}])
    with pytest.raises(ValidationError, match="same sha256"):
        AccessConfig(api_keys=[{"id": "a", "sha256": hash_secret(ALICE)}, {"id": "b", "sha256": hash_secret(ALICE)}])


def test_store_url_scheme_is_checked_without_quoting_the_rest():
    with pytest.raises(ValidationError) as err:
        AccessConfig(store="memcached://user:hunter2@cache:11211")
    assert "'memcached'" in str(err.value) and "hunter2" not in str(err.value)
    assert AccessConfig(store="rediss://cache:6380/1").store == "rediss://cache:6380/1"
