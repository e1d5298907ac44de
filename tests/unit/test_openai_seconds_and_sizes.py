"""Issue 16: OpenAI's `seconds` and `size` as the SDK sends them.

`seconds` is echoed as sent; errors about it name `seconds` (never `num_frames`, which the
client did not send) and list the values allowed at the request's fps, every one of which is
accepted. A `size` the model cannot make (OpenAI's 1280x720, 1792x1024, ...) is refused with
the nearest sizes it can make, each of which it can.
"""

from __future__ import annotations

import openai
import pytest

from serve_app.config import load_presets
from serve_app.errors import InvalidRequest
from serve_app.params import allowed_seconds, nearest_sizes, parse_size, resolve_generation, size_problem
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import REQUEST, Service, api_client, gateway_over

CATALOG = load_presets()
LIMITS = CATALOG.limits
SMALL = {"size": "64x64", "num_inference_steps": 2, "seed": 3}


@pytest.fixture
def generator():
    return FakeGenerator()


@pytest.fixture
def client(tmp_path, generator):
    gateway = gateway_over(tmp_path, generator)
    with api_client(gateway) as c:
        yield c
    gateway.stores.jobs.close()


@pytest.fixture
def sdk(client):
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client)


def refused(**fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        resolve_generation({"prompt": "p", "seed": 1, **fields}, CATALOG)
    assert info.value.status_code == 400
    return info.value


# --- seconds ------------------------------------------------------------------------------------


def test_the_sdk_gets_seconds_back_as_it_sent_them(sdk):
    video = sdk.videos.create(prompt="a red boat", size="64x64", seconds="1", extra_body={"fps": 8, "seed": 3})
    # main: "1.12" (9 frames / 8 fps), which OpenAI's answer never says for seconds="1".
    assert video.seconds == "1" and video.model_extra["num_frames"] == 9
    assert sdk.videos.retrieve(video.id).seconds == "1"
    assert [v.seconds for v in sdk.videos.list()] == ["1"]


@pytest.mark.parametrize("sent, echoed, frames", [("0.50", "0.50", 5), (1.5, "1.5", 13), (2, "2", 17)])
def test_seconds_as_text_or_number_are_echoed_as_sent(client, sent, echoed, frames):
    video = client.post("/v1/videos", json={"prompt": "p", "fps": 8, "seconds": sent, **SMALL}).json()
    assert (video["seconds"], video["num_frames"]) == (echoed, frames)


def test_without_seconds_the_answer_derives_them_from_the_frames(client):
    video = client.post("/v1/videos", json={"prompt": "p", "fps": 8, "num_frames": 9, **SMALL}).json()
    assert video["seconds"] == "1.12"


def test_a_tier_that_shortens_the_video_says_how_long_it_is(tmp_path):
    service = Service(tmp_path)
    service.busy(2)  # "reduced": 17 frames become 13
    with api_client(service.gateway) as client:
        body = {k: v for k, v in REQUEST.items() if k != "num_frames"}
        video = client.post("/v1/videos", json={**body, "seconds": "2"}).json()
    assert (video["num_frames"], video["requested"]["num_frames"]) == (13, 17)
    assert video["seconds"] == f"{13 / 8:.2f}"  # what it made, not the "2" it asked for
    service.store.close()


def test_openai_seconds_the_model_cannot_make_name_seconds_and_list_what_it_can(sdk, generator):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.videos.create(prompt="a red boat", size="64x64", seconds="8")  # 8 s at the preset's 24 fps: 193 frames
    error = info.value
    assert (error.code, error.param) == ("invalid_request", "seconds")
    assert "193 frames, more than max_frames=121" in error.message
    assert "0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5" in error.message and "nearest: 5" in error.message
    assert error.body["allowed"] == ["0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5"]
    assert generator.calls == []


@pytest.mark.parametrize(
    "seconds, fragment",
    [
        ("0", "fewer than min_frames=5; "),  # main: a 422 naming num_frames, which was never sent
        ("0.1", "3.4 frames"),
        ("3.1", "nearest: 3 or 3.5"),
        ("-1", "fewer than min_frames"),
        ("abc", "is not a number"),
    ],
)
def test_every_seconds_error_names_seconds(seconds, fragment):
    error = refused(seconds=seconds)
    assert error.param == "seconds"
    assert fragment in error.message and "allowed at fps=24" in error.message


def test_a_bad_fps_is_named_before_seconds_are_worked_out():
    error = refused(seconds="1", fps=0)  # main: the allowed list would divide by zero
    assert error.param == "fps"


@pytest.mark.parametrize("fps", range(LIMITS.min_fps, LIMITS.max_fps + 1))
def test_every_listed_seconds_value_is_accepted_and_gives_its_frames(fps):
    for text in allowed_seconds(fps, LIMITS):
        params = resolve_generation({"prompt": "p", "seed": 1, "fps": fps, "seconds": text}, CATALOG)
        assert params.num_frames == round(float(text) * fps) + 1


def test_an_fps_no_seconds_value_fits_says_to_give_num_frames():
    assert allowed_seconds(59, LIMITS) == []  # 4k/59 s: never a whole decimal within 121 frames
    error = refused(seconds="1", fps=59)
    assert error.param == "seconds" and "give num_frames" in error.message


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, first",
    [("1280x720", "1280x704"), ("720x1280", "704x1280"), ("1792x1024", "1248x736"), ("1024x1792", "736x1248")],
)
def test_openai_sizes_the_model_cannot_make_list_the_nearest_it_can(sdk, generator, size, first):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.videos.create(prompt="a red boat", size=size)
    error = info.value
    # main: a 422 naming `height` or `width`, which the client did not send.
    assert (error.code, error.param) == ("invalid_request", "size")
    assert error.body["nearest"][0] == first and f"nearest: {first}" in error.message
    for nearest in error.body["nearest"]:
        assert size_problem(*parse_size(nearest), LIMITS) is None
    assert generator.calls == []


def test_the_nearest_sizes_keep_the_aspect_and_area_close():
    assert nearest_sizes(640, 481, LIMITS) == ["640x480", "672x480", "608x480"]
    assert nearest_sizes(1280, 720, LIMITS)[:2] == ["1280x704", "1248x704"]
    assert nearest_sizes(10, 10, LIMITS)[0] == "64x64"


def test_a_size_the_model_makes_is_taken_as_it_is():
    params = resolve_generation({"prompt": "p", "seed": 1, "size": "1280x704"}, CATALOG)
    assert (params.width, params.height) == (1280, 704)
