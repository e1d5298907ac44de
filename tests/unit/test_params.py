"""`resolve_generation` against the real presets file: every rule, and no silent fixes."""

from __future__ import annotations

import random
import unicodedata

import pytest

from serve_app.cache.keys import cacheable_form
from serve_app.config import load_presets
from serve_app.errors import InvalidRequest
from serve_app.params import resolve_generation

CATALOG = load_presets()
LIMITS = CATALOG.limits
# A request that passes every check; each case below breaks exactly one field.
VALID = {"prompt": "a red boat", "width": 64, "height": 64, "num_frames": 5, "seed": 7}


def rejects(**fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        resolve_generation({**VALID, **fields}, CATALOG)
    assert info.value.status_code == 400
    return info.value


def test_presets_file_has_the_documented_limits():
    # The cases below hard-code these numbers; fail loudly if the file drifts.
    assert (LIMITS.min_side, LIMITS.max_side, LIMITS.side_multiple) == (64, 1280, 32)
    assert LIMITS.max_pixels == 1280 * 720
    assert (LIMITS.min_frames, LIMITS.max_frames, LIMITS.frames_modulus) == (5, 121, 4)
    assert (LIMITS.min_steps, LIMITS.max_steps, LIMITS.max_prompt_chars) == (1, 100, 2000)
    assert (LIMITS.min_guidance, LIMITS.max_guidance, LIMITS.min_fps, LIMITS.max_fps) == (0, 20, 1, 60)
    assert LIMITS.max_seed == 2**32 - 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("height", 32),
        ("height", 1312),
        ("width", 0),
        ("width", 1344),
        ("num_frames", 1),
        ("num_frames", 125),
        ("num_inference_steps", 0),
        ("num_inference_steps", 101),
        ("guidance_scale", -0.5),
        ("guidance_scale", 20.5),
        ("fps", 0),
        ("fps", 61),
        ("seed", -1),
        ("seed", 2**32),
    ],
)
def test_out_of_range_names_field_value_and_range(field, value):
    err = rejects(**{field: value})
    assert err.param == field
    assert f"{field}={value}" in err.message
    assert "allowed range" in err.message


@pytest.mark.parametrize(
    "field, value, nearest",
    [("height", 100, (96, 128)), ("width", 65, (64, 96)), ("width", 1270, (1248, 1280))],
)
def test_side_not_multiple_of_32_suggests_neighbours(field, value, nearest):
    err = rejects(**{field: value})
    assert err.param == field
    assert f"{field}={value}" in err.message
    assert f"nearest allowed: {nearest[0]} or {nearest[1]}" in err.message


@pytest.mark.parametrize("frames, nearest", [(16, (13, 17)), (6, (5, 9)), (120, (117, 121))])
def test_num_frames_must_be_4k_plus_1_and_is_not_rounded(frames, nearest):
    err = rejects(num_frames=frames)
    assert err.param == "num_frames"
    assert f"num_frames={frames}" in err.message
    assert f"nearest allowed: {nearest[0]} or {nearest[1]}" in err.message


@pytest.mark.parametrize("size", ["1280x736", "992x960"])
def test_too_many_pixels(size):
    err = rejects(size=size, width=None, height=None)
    w, h = map(int, size.split("x"))
    assert err.param == "size"
    assert size in err.message and str(w * h) in err.message


@pytest.mark.parametrize("size", ["640", "640x480x3", "axb", "640x", "x480", "-64x64", "64.0x64", "64*64", ""])
def test_malformed_size(size):
    err = rejects(size=size, width=None, height=None)
    assert err.param == "size"
    assert repr(size) in err.message


def test_size_with_superscript_digit_is_a_400():
    assert rejects(size="²x480", width=None, height=None).param == "size"


@pytest.mark.parametrize("other", [{"width": 64}, {"height": 64}])
def test_size_and_width_height_together(other):
    with pytest.raises(InvalidRequest) as info:
        resolve_generation({"prompt": "p", "size": "64x64", **other}, CATALOG)
    assert info.value.param == "size"
    assert info.value.status_code == 400


@pytest.mark.parametrize("prompt", [None, "", "   ", "\n\t"])
def test_empty_prompt(prompt):
    err = rejects(prompt=prompt)
    assert err.param == "prompt"
    assert "empty" in err.message


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_over_long_text(field):
    err = rejects(**{field: "x" * 2001})
    assert err.param == field
    assert "2001" in err.message and "2000" in err.message
    # The limit itself is allowed.
    assert getattr(resolve_generation({**VALID, field: "x" * 2000}, CATALOG), field) == "x" * 2000


# U+FDFA (one character) is 18 under NFKC, which a cacheable request runs: 112 of them
# are 2016 characters of prompt, 111 are 1998. Refused with or without the cache.
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("cacheable", [False, True])
def test_length_is_checked_after_nfkc(field, cacheable):
    with pytest.raises(InvalidRequest) as info:
        resolve_generation({**VALID, field: "\ufdfa" * 112}, CATALOG)
    assert info.value.param == field
    assert "2016" in info.value.message and "NFKC" in info.value.message and "2000" in info.value.message
    params = resolve_generation({**VALID, field: "\ufdfa" * 111}, CATALOG)
    if cacheable:
        params = cacheable_form(
            params, seed_given=False, model_identity="m@r1", casefold=False, max_seed=CATALOG.limits.max_seed
        )
    assert len(unicodedata.normalize("NFKC", getattr(params, field))) == 1998


def test_unknown_preset():
    err = rejects(preset="cinema")
    assert err.param == "preset"
    assert "'cinema'" in err.message
    assert all(name in err.message for name in ("preview", "standard", "official"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("height", 64),
        ("width", 1280),
        ("num_frames", 5),
        ("num_frames", 121),
        ("num_inference_steps", 1),
        ("num_inference_steps", 100),
        ("guidance_scale", 0.0),
        ("guidance_scale", 20.0),
        ("fps", 1),
        ("fps", 60),
        ("seed", 0),
        ("seed", 2**32 - 1),
    ],
)
def test_bounds_are_inclusive_and_kept_exactly(field, value):
    params = resolve_generation({**VALID, field: value}, CATALOG)
    assert getattr(params, field) == value


def test_size_at_max_pixels_is_allowed():
    params = resolve_generation({"prompt": "p", "size": "960x960"}, CATALOG)
    assert (params.width, params.height) == (960, 960)


@pytest.mark.parametrize("name", ["preview", "standard", "official"])
def test_preset_values_used_when_not_overridden(name):
    preset = CATALOG.presets[name]
    params = resolve_generation({"prompt": "p", "preset": name, "seed": 1}, CATALOG)
    assert params.preset == name
    assert (params.width, params.height, params.num_frames) == (preset.width, preset.height, preset.num_frames)
    assert params.num_inference_steps == preset.num_inference_steps
    assert (params.guidance_scale, params.fps) == (preset.guidance_scale, preset.fps)
    assert params.negative_prompt == preset.negative_prompt


def test_default_preset_when_none_named():
    params = resolve_generation({"prompt": "p", "seed": 1}, CATALOG)
    assert params.preset == CATALOG.default_preset == "preview"
    assert params.size == "640x480"


def test_overrides_apply_on_top_of_preset():
    overrides = dict(
        width=96,
        height=160,
        num_frames=9,
        num_inference_steps=3,
        guidance_scale=1.5,
        fps=8,
        negative_prompt="blur",
        seed=42,
    )
    params = resolve_generation({"prompt": "p", "preset": "official", **overrides}, CATALOG)
    text_to_video = {"fast": None, "input_reference_sha256": None}
    assert params.model_dump() == {"prompt": "p", "preset": "official", **text_to_video, **overrides}
    assert params.size == "96x160"


def test_size_string_sets_width_and_height():
    params = resolve_generation({"prompt": "p", "size": "832X480", "seed": 1}, CATALOG)
    assert (params.width, params.height) == (832, 480)


def test_missing_seed_is_drawn_from_rng_in_range():
    params = resolve_generation({"prompt": "p"}, CATALOG, rng=random.Random(1))
    assert params.seed == random.Random(1).randint(0, LIMITS.max_seed)
    assert 0 <= params.seed <= LIMITS.max_seed


def test_given_seed_is_not_replaced():
    rng = random.Random(1)
    assert resolve_generation({"prompt": "p", "seed": 0}, CATALOG, rng=rng).seed == 0
    # The rng was not consumed: a given seed does not perturb later draws.
    assert rng.random() == random.Random(1).random()
