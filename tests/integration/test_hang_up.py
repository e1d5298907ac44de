"""A synchronous caller hanging up, through Ray Serve's proxy (issue 15 item 8).

The gateway does not cancel a job whose request carried an Idempotency-Key when
its caller hangs up (tests/unit/test_hang_up.py, Ray-free). Through Serve there
is one more way to lose it: Serve cancels a disconnected request's handler and,
with it, every model call made in that request's context, so a job task started
from the request would have its denoiser call cancelled under it.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.helpers.load_app import ALICE, JOB, bearer, wait_done

pytestmark = pytest.mark.integration


def test_a_keyed_sync_request_hung_up_mid_denoising_completes_for_its_retry(load_url, gate):
    key = {**bearer(ALICE), "Idempotency-Key": uuid.uuid4().hex}
    body = {"prompt": f"hang up {uuid.uuid4().hex[:6]}", **JOB, "quality": "exact"}
    with gate.closed():
        with httpx.Client(base_url=load_url, timeout=1.5) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                impatient.post("/v1/videos", json=body, headers=key)  # held at the gate, then hung up on
        held = gate.wait_held(1)
        assert held, "the job never reached the denoiser"
    # The gate is open: the job runs on. The retry finds the same job (waiting for it, or,
    # past its estimate, answering 202 with it) and the job completes.
    with httpx.Client(base_url=load_url, timeout=60) as patient:
        answer = patient.post("/v1/videos", json=body, headers=key)
        assert answer.status_code in (200, 202), answer.text
        assert answer.json()["status"] != "failed", answer.text
        video = wait_done(patient, [answer.json()["id"]], ALICE, timeout_s=60)[0]
    assert video["status"] == "completed", video
