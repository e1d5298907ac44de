"""Image to video over HTTP, end to end, without Ray: the real gateway, the real `StageGraph`,
the real stage classes (tiny model, CPU), joined in this process by tests/helpers/local_graph.py.

The upload goes in as the OpenAI SDK sends it; what comes back is checked against
the model, not the picture (random VAE weights reconstruct nothing recognisable):
- the denoiser's latents keep frame 0 equal to the video encoder's encoding of the image;
- the mp4's first frame is the VAE's own reconstruction of the fitted image, up to x264 loss.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app import metrics
from serve_app.api.gateway_app import GatewayStores
from serve_app.artifacts import open_artifact_store
from serve_app.config import ServiceArgs
from serve_app.graph import StageGraph
from serve_app.images import fitted_image
from serve_app.messages import DenoisedLatents, ImageLatents
from serve_app.pipeline.image_condition import encode_image
from serve_app.pipeline.stages import decode_latents
from serve_app.reference_images import reference_images_for
from serve_app.video import decode_mp4, encode_mp4, frames_to_uint8
from tests.helpers.images import encoded
from tests.helpers.local_graph import LocalHandle, local_stages, shut_down
from tests.helpers.service import TEST_TIMINGS, api_client, gateway_over

FIELDS = {"prompt": "a red fox", "size": "96x64", "num_frames": 9, "fps": 8, "num_inference_steps": 3, "seed": 5}
# Structure the tiny random VAE keeps a trace of (of noise it keeps next to nothing): the left
# half white, at another size and aspect than the video's, so the fit runs. MIRRORED: the right half.
_HALF = np.zeros((90, 120, 3), np.uint8)
_HALF[:, :60] = 255
UPLOAD = encoded(_HALF)
MIRRORED = encoded(np.ascontiguousarray(_HALF[:, ::-1]))
# Mean absolute difference, in 0-255 levels, between one frame put through x264 as the first of a
# video and as the first of a still: rate control sees other frames after it (measured ~2.7).
X264_JITTER_LEVELS = 4.0


@pytest.fixture(scope="module")
def stages(data_dir):
    args = ServiceArgs(data_dir=str(data_dir), warmup=False, compile_cache_dir="off", previews={"enabled": False})
    built = local_stages(args.model_dump())
    # The constructors turn Ray's metrics on; this process has no Ray to report to.
    metrics._enabled = False
    yield built
    shut_down(built)


@pytest.fixture
def service(tmp_path, stages):
    args = ServiceArgs(data_dir=str(tmp_path), **TEST_TIMINGS)
    images = reference_images_for(open_artifact_store(args.artifact_store, args.data_path))
    handles = {name: LocalHandle(stage) for name, stage in stages.items()}
    graph = StageGraph(handles["prompt_encoder"], handles["denoiser"], handles["video_encoder"], images=images)
    gateway = gateway_over(tmp_path, graph, args=args)
    assert isinstance(gateway.stores, GatewayStores)
    yield gateway, handles
    gateway.stores.jobs.close()


def _reconstruction(video_encoder, upload: bytes) -> np.ndarray:
    """What the VAE makes of the fitted image on its own: encode it, decode that one latent frame."""
    width, height = (int(side) for side in FIELDS["size"].split("x"))
    latent = encode_image(video_encoder.pipe, fitted_image(upload, width, height, 10**7), height, width)
    return frames_to_uint8(decode_latents(video_encoder.pipe, latent))[0]


def _as_mp4_still(frame: np.ndarray) -> np.ndarray:
    """`frame` after the mp4 encoder, as the first of as many frames as the video has."""
    return decode_mp4(encode_mp4(np.stack([frame] * FIELDS["num_frames"]), FIELDS["fps"]))[0]


def _mean_levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_an_uploaded_image_becomes_the_first_frame(service, stages):
    gateway, handles = service
    files = {**{k: (None, str(v)) for k, v in FIELDS.items()}, "input_reference": ("fox.png", UPLOAD, "image/png")}
    with api_client(gateway) as client:
        response = client.post("/v1/videos", files=files)
        assert response.status_code == 200, response.text
        video = response.json()
        assert video["status"] == "completed" and (video["width"], video["height"]) == (96, 64)
        content = client.get(f"/v1/videos/{video['id']}/content")
        assert content.status_code == 200
    frames = decode_mp4(content.content)
    assert frames.shape == (9, 64, 96, 3)

    # The denoiser's output keeps latent frame 0 equal to the encoded image, bit for bit.
    [image_latents] = handles["video_encoder"].calls["encode_image"]
    assert isinstance(image_latents, ImageLatents) and image_latents.latents.shape == (1, 48, 1, 4, 6)
    [denoised] = [m for m in handles["denoiser"].calls["denoise"] if isinstance(m, DenoisedLatents)]
    assert np.array_equal(denoised.latents[:, :, :1], image_latents.latents)

    # The mp4's first frame is the VAE's reconstruction of the fitted image, up to x264's loss: the
    # reconstruction goes through the same mp4 encoder as a still, so the loss is on both sides.
    ours = _mean_levels(frames[0], _as_mp4_still(_reconstruction(stages["video_encoder"], UPLOAD)))
    assert ours < X264_JITTER_LEVELS, ours
    # ... and the check can fail: the mirrored picture's reconstruction, or the next frame, is far off.
    mirrored = _mean_levels(frames[0], _as_mp4_still(_reconstruction(stages["video_encoder"], MIRRORED)))
    assert mirrored > 1.5 * ours, (ours, mirrored)
    assert _mean_levels(frames[1], _as_mp4_still(_reconstruction(stages["video_encoder"], UPLOAD))) > 4 * ours


def test_a_text_request_through_the_same_graph_never_encodes_an_image(service):
    gateway, handles = service
    with api_client(gateway) as client:
        response = client.post("/v1/videos", json={**FIELDS, "seed": 6})
    assert response.status_code == 200, response.text
    assert "encode_image" not in handles["video_encoder"].calls


def test_an_image_gone_from_the_store_fails_the_job_saying_so(service):
    gateway, _ = service
    files = {**{k: (None, str(v)) for k, v in FIELDS.items()}, "input_reference": ("fox.png", UPLOAD, "image/png")}
    original_put = gateway.stores.images.put
    gateway.creator.images.put = lambda sha, data: None  # stored nowhere: as if swept before the run
    try:
        with api_client(gateway) as client:
            response = client.post("/v1/videos", files=files)
    finally:
        gateway.creator.images.put = original_put
    assert response.status_code == 410, response.text
    error = response.json()["error"]
    assert error["code"] == "input_reference_gone" and error["param"] == "input_reference"
    assert "no longer stored" in error["message"]
