"""A model revision change misses the result cache, through the API, on one shared index."""

from __future__ import annotations

from serve_app.config import load_model_profile
from tests.helpers.service import REQUEST, Service, api_client


def _post(service: Service) -> dict:
    with api_client(service.gateway) as client:
        response = client.post("/v1/videos", json=REQUEST)
    assert response.status_code == 200, response.text
    return response.json()


def test_new_revision_misses_and_the_old_one_still_hits(tmp_path):
    old = load_model_profile("tiny")
    new = old.model_copy(update={"revision": old.revision + "-retrained"})
    assert new.identity != old.identity

    first = Service(tmp_path, profile=old)
    try:
        made = _post(first)
        again = _post(first)
    finally:
        first.store.close()
    assert not made["cached"] and again["cached"] and again["cache_key"] == made["cache_key"]
    assert len(first.generator.calls) == 1

    # Same data directory, so the same cache index and files: only the revision differs.
    second = Service(tmp_path, profile=new)
    try:
        fresh = _post(second)
    finally:
        second.store.close()
    assert not fresh["cached"] and fresh["cache_key"] != made["cache_key"]
    assert len(second.generator.calls) == 1  # generated again, for the new weights

    third = Service(tmp_path, profile=old)
    try:
        assert _post(third)["cached"]  # the old revision's entry is untouched
    finally:
        third.store.close()
    assert third.generator.calls == []
