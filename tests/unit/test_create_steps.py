"""The steps of a create that are plain functions: the cache's form of a request resolved once."""

from __future__ import annotations

import random

import pytest

from serve_app.api.create import cacheable_form
from serve_app.config import load_presets
from serve_app.params import resolve_generation

CATALOG = load_presets()
MODEL = "wan2.2-ti2v-tiny@seed0"


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt": "  Happy\u00a0 birthday ", "negative_prompt": " blur\t\tnoise"},
        {"prompt": "a red boat", "seed": 7},
        {"prompt": "A Red Boat", "width": 64, "height": 64, "num_frames": 9, "guidance_scale": 5},
        {"prompt": "ｆｕｌｌ width", "preset": "standard"},
    ],
)
@pytest.mark.parametrize("casefold", [False, True])
def test_cacheable_form_is_what_resolving_for_the_cache_gives(request_fields, casefold):
    resolved = resolve_generation(request_fields, CATALOG, rng=random.Random(5))
    made = cacheable_form(
        resolved,
        seed_given="seed" in request_fields,
        model_identity=MODEL,
        casefold=casefold,
        max_seed=CATALOG.limits.max_seed,
    )
    assert made == resolve_generation(request_fields, CATALOG, cache_model=MODEL, casefold=casefold)
