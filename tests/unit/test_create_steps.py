"""The steps of a create that are plain functions: the cache's form of a request resolved once."""

from __future__ import annotations

import random

import pytest

from serve_app.cache.keys import cache_key, cacheable_form, normalize_prompt
from serve_app.config import load_presets
from serve_app.params import GenerationParams, resolve_generation

CATALOG = load_presets()
MODEL = "wan2.2-ti2v-tiny@seed0"
REQUESTS = [
    {"prompt": "  Happy\u00a0 birthday ", "negative_prompt": " blur\t\tnoise"},
    {"prompt": "a red boat", "seed": 7},
    {"prompt": "A Red Boat", "width": 64, "height": 64, "num_frames": 9, "guidance_scale": 5},
    {"prompt": "ｆｕｌｌ width", "preset": "standard"},
]


def cacheable(params: GenerationParams, seed_given: bool, casefold: bool) -> GenerationParams:
    return cacheable_form(
        params, seed_given=seed_given, model_identity=MODEL, casefold=casefold, max_seed=CATALOG.limits.max_seed
    )


@pytest.mark.parametrize("request_fields", REQUESTS)
@pytest.mark.parametrize("casefold", [False, True])
def test_the_cacheable_form_changes_only_the_prompts_and_a_seed_nobody_named(request_fields, casefold):
    seed_given = "seed" in request_fields
    resolved = resolve_generation(request_fields, CATALOG, rng=random.Random(5))
    made = cacheable(resolved, seed_given, casefold)
    assert made.prompt == normalize_prompt(resolved.prompt, casefold)
    assert made.negative_prompt == normalize_prompt(resolved.negative_prompt, casefold)
    changed = {"prompt", "negative_prompt", "seed"}
    assert made.model_dump(exclude=changed) == resolved.model_dump(exclude=changed)
    if seed_given:
        assert made.seed == request_fields["seed"]
    else:
        # Derived from the request, whatever random seed resolving drew: the same request, the same video.
        other = resolve_generation(request_fields, CATALOG, rng=random.Random(6))
        assert other.seed != resolved.seed and cacheable(other, False, casefold) == made


@pytest.mark.parametrize("request_fields", [r for r in REQUESTS if "seed" not in r])
def test_naming_the_derived_seed_is_the_same_request(request_fields):
    made = cacheable(resolve_generation(request_fields, CATALOG), False, False)
    named = cacheable(resolve_generation({**request_fields, "seed": made.seed}, CATALOG), True, False)
    assert named == made and cache_key(MODEL, named.model_dump()) == cache_key(MODEL, made.model_dump())
    assert cacheable(made, True, False) == made  # the form of the form is itself
