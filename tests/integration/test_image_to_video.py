"""Image to video through the running Serve app (tiny model, CPU): what only Ray adds to
tests/unit/test_image_to_video_http.py. The video encoder's `encode_image` response goes to the
denoiser as a keyword argument that Ray resolves replica to replica, the latent crosses as
numpy, and the gateway (which must never import torch) relays none of it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from serve_app.video import decode_mp4
from tests.helpers.images import data_url, encoded

pytestmark = pytest.mark.integration

FIELDS = {
    "prompt": "a lighthouse at dusk",
    "size": "96x64",
    "num_frames": 9,
    "num_inference_steps": 3,
    "fps": 8,
    "seed": 3,
}


def _picture(right: bool) -> bytes:
    half = np.zeros((90, 120, 3), np.uint8)
    if right:
        half[:, 60:] = 255
    else:
        half[:, :60] = 255
    return encoded(half)


def test_an_image_job_runs_through_the_graph(client):
    image = _picture(right=False)
    files = {**{k: (None, str(v)) for k, v in FIELDS.items()}, "input_reference": ("a.png", image, "image/png")}
    response = client.post("/v1/videos", files=files)
    assert response.status_code == 200, response.text
    video = response.json()
    assert video["status"] == "completed" and video["input_reference_sha256"] == hashlib.sha256(image).hexdigest()
    frames = decode_mp4(client.get(f"/v1/videos/{video['id']}/content").content)
    assert frames.shape == (9, 64, 96, 3)

    # The same request with the other picture: another cache key, another first frame.
    other = client.post("/v1/videos", json={**FIELDS, "input_reference": {"image_url": data_url(_picture(True))}})
    assert other.status_code == 200, other.text
    assert other.json()["cache_key"] != video["cache_key"] and not other.json()["cached"]
    other_frames = decode_mp4(client.get(f"/v1/videos/{other.json()['id']}/content").content)
    assert np.abs(other_frames[0].astype(float) - frames[0]).mean() > 1.0

    # And the first again: answered from the cache.
    again = client.post("/v1/videos", files=files)
    assert again.status_code == 200 and again.json()["cached"]


def test_a_bad_image_is_refused_before_any_stage_runs(client):
    files = {**{k: (None, str(v)) for k, v in FIELDS.items()}, "input_reference": ("a.png", b"not a png", "image/png")}
    response = client.post("/v1/videos", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input_reference"
