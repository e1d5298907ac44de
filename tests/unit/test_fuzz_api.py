"""Schema fuzzing: schemathesis against the service's own OpenAPI spec, in-process.

Every operation of /openapi.json gets generated requests, both ones that fit
the schema (positive) and ones that break it on purpose (negative), through
the ASGI app that `build_gateway` makes around a fake generator (no Ray, no
model). The properties:

- no request gets a 5xx;
- every 4xx is JSON in the error shape {"error": {"code", "message", "type",
  "param"}} with a non-empty code and message, and no stack trace.

Derandomized (Hypothesis' seed comes from each test's name) and without an
example database, so CI sees the same requests on every run; the per-operation
example counts keep the total above 1,000 requests and the run near half a
minute on two cores.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serve_app.graph import GraphResult
from serve_app.messages import EncodedVideo
from serve_app.video import encode_mp4
from tests.helpers.service import gateway_over

MIN_REQUESTS = 1000
# Examples per operation and mode; the create route has the richest input.
EXAMPLES = {("POST", "/v1/videos"): 320}
DEFAULT_EXAMPLES = 55
# Known ids are swapped into every n-th generated video_id, so reads, cancels
# and deletes also reach real jobs rather than only 404s.
KNOWN_ID_EVERY = 3

TINY_MP4 = encode_mp4(np.full((5, 64, 64, 3), 90, dtype=np.uint8), 8)


class InstantGenerator:
    """Finishes every job at once with the same tiny mp4: fuzzing is about the API, not pixels."""

    async def generate(self, params, deadline, on_progress=None, job_id=None) -> GraphResult:
        video = EncodedVideo(
            mp4=TINY_MP4,
            num_frames=params.num_frames,
            width=params.width,
            height=params.height,
            fps=params.fps,
            decode_s=0.0,
            encode_s=0.0,
        )
        return GraphResult(video=video, prompt_encode_s=0.0, denoise_s=0.0, total_s=0.0)


@pytest.fixture(scope="module")
def app_and_ids(tmp_path_factory):
    gateway = gateway_over(tmp_path_factory.mktemp("fuzz"), InstantGenerator(), replica_id="fuzz")
    yield gateway.app, gateway.stores.jobs
    gateway.stores.jobs.close()


def header(response, name: str) -> str:
    values = response.headers.get(name.lower()) or [""]  # schemathesis keeps every value of a header
    return values[0]


def assert_error_shape(response, where: str) -> None:
    content_type = header(response, "content-type")
    assert content_type.startswith("application/json"), (
        f"{where}: {response.status_code} is not JSON: {content_type!r} {response.text[:200]!r}"
    )
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{where}: {body!r}"
    error = body["error"]
    assert {"code", "message", "type", "param"} <= set(error), f"{where}: missing keys in {error!r}"
    assert isinstance(error["code"], str) and error["code"], f"{where}: {error!r}"
    assert isinstance(error["message"], str) and error["message"], f"{where}: {error!r}"
    assert isinstance(error["type"], str) and error["type"], f"{where}: {error!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"{where}: {error!r}"
    assert "Traceback" not in response.text, f"{where}: a stack trace reached the client"


def test_schemathesis_finds_no_5xx_and_only_shaped_4xx(app_and_ids):
    app, store = app_and_ids
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Some real jobs to aim path parameters at (the first requests create them).
    known: list[str] = []
    rotation = itertools.count()
    seen: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    unbreakable: list[str] = []
    started = time.perf_counter()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    # The create route first: its successes fill `known`.
    operations.sort(key=lambda op: (op.path, op.method) != ("/v1/videos", "POST"))

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            examples = EXAMPLES.get((operation.method.upper(), operation.path), DEFAULT_EXAMPLES)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def check(case):
                if "video_id" in (case.path_parameters or {}) and known and next(rotation) % KNOWN_ID_EVERY == 0:
                    case.path_parameters["video_id"] = known[next(rotation) % len(known)]
                response = case.call()
                where = f"{case.method} {case.formatted_path} ({mode.value})"
                seen[f"{operation.label} {mode.value}"] += 1
                statuses[response.status_code] += 1
                assert response.status_code < 500, (
                    f"{where}: {response.status_code} {response.text[:500]!r}\n{case.as_curl_command()}"
                )
                if 400 <= response.status_code < 500:
                    assert_error_shape(response, where)
                elif case.method == "POST" and case.path == "/v1/videos" and response.status_code in (200, 202):
                    known.append(response.json()["id"])

            try:
                check()
            except Unsatisfiable:
                # Nothing in this operation's schema can be broken (no parameters, no body).
                assert mode == GenerationMode.NEGATIVE, operation.label
                unbreakable.append(operation.label)

    total = sum(seen.values())
    elapsed = time.perf_counter() - started
    print(
        f"\nschemathesis: {total} requests over {len(seen)} operation/mode pairs in {elapsed:.1f}s; "
        f"statuses {dict(sorted(statuses.items()))}; no negative cases for {unbreakable}"
    )
    assert total >= MIN_REQUESTS, seen
    assert statuses[200] and any(400 <= s < 500 for s in statuses), statuses  # both sides were reached
