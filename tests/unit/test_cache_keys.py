"""Canonical cache keys: what must share a key, what must not."""

from __future__ import annotations

import pytest

from serve_app.cache.keys import cache_key, derived_seed, normalize_prompt
from serve_app.config import load_presets
from serve_app.params import resolve_generation

MODEL = "wan2.2-ti2v-tiny@seed0"
BASE = {
    "prompt": "Happy birthday",
    "width": 64,
    "height": 64,
    "num_frames": 9,
    "num_inference_steps": 4,
    "fps": 8,
    "seed": 7,
}


def key_of(request: dict, model: str = MODEL, casefold: bool = False) -> str:
    params = resolve_generation(request, load_presets(), cache_model=model, casefold=casefold)
    return cache_key(model, params.model_dump())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  Happy   birthday \n", "Happy birthday"),
        ("Happy\tbirthday", "Happy birthday"),
        ("ｈａｐｐｙ", "happy"),  # full-width letters, NFKC
        ("ﬁne", "fine"),  # ligature, NFKC
    ],
)
def test_normalize_prompt(text, expected):
    assert normalize_prompt(text) == expected


@pytest.mark.parametrize(
    "variant",
    [
        {"prompt": "  Happy   birthday "},
        {"guidance_scale": 5},  # the preset's 5.0, written as an int
        {"preset": "standard", "guidance_scale": 5.0, "negative_prompt": ""},  # other preset, same pixels
        {"deadline_s": 12.0},
        {"webhook_url": "https://example.com/hook"},
    ],
)
def test_same_pixels_share_a_key(variant):
    assert key_of({**BASE, **variant}) == key_of(BASE)


@pytest.mark.parametrize(
    "variant",
    [
        {"prompt": "Happy birthday!"},
        {"negative_prompt": "blurry"},
        {"width": 96},
        {"height": 96},
        {"num_frames": 13},
        {"num_inference_steps": 5},
        {"guidance_scale": 4.5},
        {"fps": 12},
        {"seed": 8},
    ],
)
def test_every_pixel_setting_is_in_the_key(variant):
    assert key_of({**BASE, **variant}) != key_of(BASE)


def test_model_revision_changes_the_key():
    assert key_of(BASE, model="wan2.2-ti2v-tiny@seed1") != key_of(BASE)


def test_case_folding_is_a_switch():
    upper = {**BASE, "prompt": "HAPPY BIRTHDAY"}
    assert key_of(upper) != key_of(BASE)
    assert key_of(upper, casefold=True) == key_of(BASE, casefold=True)
    params = resolve_generation(upper, load_presets(), cache_model=MODEL, casefold=True)
    assert params.prompt == "happy birthday"  # generated as keyed


def test_missing_seed_is_derived_from_the_request():
    unseeded = {k: v for k, v in BASE.items() if k != "seed"}
    a = resolve_generation(unseeded, load_presets(), cache_model=MODEL)
    b = resolve_generation({**unseeded, "prompt": " Happy  birthday"}, load_presets(), cache_model=MODEL)
    c = resolve_generation({**unseeded, "prompt": "Happy new year"}, load_presets(), cache_model=MODEL)
    assert a.seed == b.seed != c.seed
    # Naming the derived seed explicitly is the same request.
    assert key_of({**unseeded, "seed": a.seed}) == cache_key(MODEL, a.model_dump())


def test_without_cache_a_missing_seed_is_random_and_the_prompt_untouched():
    import random

    unseeded = {k: v for k, v in BASE.items() if k != "seed"}
    params = resolve_generation({**unseeded, "prompt": " Happy  birthday"}, load_presets(), rng=random.Random(3))
    assert params.prompt == " Happy  birthday"
    assert params.seed == random.Random(3).randint(0, 2**32 - 1)


def test_derived_seed_is_in_range():
    values = {
        "prompt": "x",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_frames": 9,
        "fps": 8,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
    }
    assert 0 <= derived_seed(MODEL, values, 100) <= 100
