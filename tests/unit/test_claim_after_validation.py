"""Issue 15, item 13: a request refused for its `deadline_s` must not leave a single-flight
claim behind. A leaked claim would make the next identical request wait on a job that
was never stored.

With admission on, the deadline was already checked before the claim (this test passes
on 6ea15a9 too); only the test-only no-admission gateway checked it after the claim.
create_video's steps now check it at step 4, before the claim at step 5, in both modes.
"""

from __future__ import annotations

import pytest

from deployments.result_cache import ResultCache
from serve_app.config import ServiceArgs
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import REQUEST, TEST_TIMINGS, Service, api_client, gateway_over


def _with_admission(tmp_path):
    service = Service(tmp_path)
    return service.gateway, service.generator


def _without_admission(tmp_path):
    args = ServiceArgs(data_dir=str(tmp_path), **TEST_TIMINGS)
    generator = FakeGenerator()
    cache = ResultCache.func_or_class(args.model_dump())
    return gateway_over(tmp_path, generator, args=args, cache=cache, admission=False), generator


@pytest.mark.parametrize("build", [_with_admission, _without_admission])
@pytest.mark.parametrize("bad_deadline", [1e9, 0, -5])
def test_a_refused_deadline_leaves_no_claim_for_the_next_identical_request(tmp_path, build, bad_deadline):
    gateway, generator = build(tmp_path)
    try:
        with api_client(gateway) as client:
            refused = client.post("/v1/videos", json={**REQUEST, "deadline_s": bad_deadline})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "deadline_s"
            made = client.post("/v1/videos", json=REQUEST)
        assert made.status_code == 200, made.text
        assert made.json()["status"] == "completed" and not made.json()["cached"]
        assert len(generator.calls) == 1  # made here, not waited on from a ghost claim
    finally:
        gateway.stores.jobs.close()
