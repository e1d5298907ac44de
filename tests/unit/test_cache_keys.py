"""Canonical cache keys: what must share a key, what must not."""

from __future__ import annotations

import pytest

from serve_app.cache.keys import cache_key, cacheable_form, derived_seed, normalize_prompt
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


def cacheable(request: dict, model: str = MODEL, casefold: bool = False):
    """The request resolved, then in the form the cache keys and runs (as a create does it)."""
    catalog = load_presets()
    return cacheable_form(
        resolve_generation(request, catalog),
        seed_given=request.get("seed") is not None,
        model_identity=model,
        casefold=casefold,
        max_seed=catalog.limits.max_seed,
    )


def key_of(request: dict, model: str = MODEL, casefold: bool = False) -> str:
    return cache_key(model, cacheable(request, model, casefold).model_dump())


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
    params = cacheable(upper, casefold=True)
    assert params.prompt == "happy birthday"  # generated as keyed


def test_missing_seed_is_derived_from_the_request():
    unseeded = {k: v for k, v in BASE.items() if k != "seed"}
    a = cacheable(unseeded)
    b = cacheable({**unseeded, "prompt": " Happy  birthday"})
    c = cacheable({**unseeded, "prompt": "Happy new year"})
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


# Keys computed before `fast` was typed (FastKnobs, was a dict): a request's key must not
# change with the type, or every cached fast-tier video would be orphaned by an upgrade.
PINNED_KEYS = {
    None: "50bf66fe3ed1ed46dc292e22c4bbfcaeb9d107fe4946e4c0a06714d328507c5d",
    (("step_cache_threshold", 0.3),): "f4929be9770a2be9737dabd4318fab47433a50d4da7ebc559c487fdce19f369a",
    (("fp8", True), ("step_cache_threshold", 0.5)): "704b2f565e9133d046a1fc66a458ba5c1a5bd1c3b354c805d51a84765edf0084",
    (("fp8", True),): "eb9974fc96059615558e3d57a6af756e2c7845b5eca9758511c1674589ae7240",
}
PINNED_SEEDS = {
    (("step_cache_threshold", 0.3),): 2330385316,
    (("fp8", True), ("step_cache_threshold", 0.5)): 2000956774,
    (("fp8", True),): 609942285,
}


@pytest.mark.parametrize("fast", list(PINNED_KEYS))
def test_keys_of_fast_tier_requests_are_the_ones_before_fast_was_typed(fast):
    from serve_app.config import ServiceArgs
    from serve_app.policy.tiers import Tier, apply_tier

    params = resolve_generation({"prompt": "A red  boat", "seed": 7}, ServiceArgs().preset_catalog())
    if fast is not None:
        params = apply_tier(params, Tier(name="fast", max_load=1.0, max_steps=15, fast=dict(fast)))
    assert cache_key("m@1", params.model_dump()) == PINNED_KEYS[fast]
    if fast is not None:
        assert derived_seed("m@1", {**params.model_dump(), "seed": None}, 2**32 - 1) == PINNED_SEEDS[fast]


def test_fast_knobs_at_their_defaults_do_not_split_the_key():
    # `fp8: false` spelled out in a tiers file, and a threshold of 1 or 1.0: the same pixels, one key.
    values = resolve_generation(BASE, load_presets()).model_dump()
    plain = cache_key(MODEL, {**values, "fast": {"step_cache_threshold": 1.0}})
    assert cache_key(MODEL, {**values, "fast": {"step_cache_threshold": 1, "fp8": False}}) == plain
    assert cache_key(MODEL, {**values, "fast": {"fp8": False}}) == cache_key(MODEL, {**values, "fast": None})
