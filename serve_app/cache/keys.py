"""Canonical cache keys: what makes two requests the same video.

The key is SHA-256 over canonical JSON of:
  model      the profile's model id and revision (new weights never hit old videos)
  prompt     normalised: Unicode NFKC, runs of whitespace collapsed to one space,
             trimmed; case-folded too when `cache_casefold` is on
  negative_prompt   normalised the same way
  width, height, num_frames, fps, num_inference_steps, guidance_scale, seed
  fast       a tier's quality-changing speed-ups (step cache, FP8), when any: only
             the knobs that differ from FastKnobs' defaults, so `{fp8: false}`
             spelled out or left out is one key, and a threshold of 1 is 1.0
  scope      whose entries these are: the API key's id with keys on and
             `cache_scope: per_key` (the default), absent when shared
  input_reference_sha256   image to video: SHA-256 of the first-frame image file, when any
Everything else (preset name, deadline, webhook, ids) does not change pixels
and is left out. Requests that give no seed get one derived from the key of
everything else but the scope, so the same request gives the same video, and a request that
names that seed shares the entry. The generation runs on the normalised
prompt, so two prompts that share a key really make the same frames:
`cacheable_form` is the request as the cache keys and runs it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from serve_app.params import GenerationParams
from serve_app.settings.speed import FastKnobs

PIXEL_FIELDS = ("width", "height", "num_frames", "fps", "num_inference_steps", "guidance_scale")
_WHITESPACE = re.compile(r"\s+")


def normalize_prompt(text: str, casefold: bool = False) -> str:
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return text.casefold() if casefold else text


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _payload(model_identity: str, values: dict[str, Any]) -> dict[str, Any]:
    payload = {field: values[field] for field in PIXEL_FIELDS}
    payload["guidance_scale"] = float(payload["guidance_scale"])  # 5 and 5.0 are one key
    payload.update(model=model_identity, prompt=values["prompt"], negative_prompt=values["negative_prompt"])
    fast = values.get("fast")
    if fast is not None:  # a step cache or FP8 changes the pixels
        knobs = FastKnobs.model_validate(fast)  # a dict of model_dump() or the model itself
        if not knobs.exact:
            payload["fast"] = knobs.model_dump(exclude_defaults=True)
    if values.get("input_reference_sha256"):  # image to video: the first frame's file
        payload["input_reference_sha256"] = values["input_reference_sha256"]
    return payload


def derived_seed(model_identity: str, values: dict[str, Any], max_seed: int) -> int:
    """The seed of a request that gives none: a function of everything else."""
    digest = _digest({**_payload(model_identity, values), "seed": None})
    return int(digest[:16], 16) % (max_seed + 1)


def cache_key(model_identity: str, values: dict[str, Any], scope: str | None = None) -> str:
    """The entry's key (hex), over normalised values that include the seed. `scope` (an API
    key's id) gives the same request another key per scope; None keeps the shared key."""
    payload = {**_payload(model_identity, values), "seed": int(values["seed"])}
    if scope is not None:
        payload["scope"] = scope
    return _digest(payload)


def cacheable_form(
    params: GenerationParams, *, seed_given: bool, model_identity: str, casefold: bool, max_seed: int
) -> GenerationParams:
    """`params` (resolved and checked, serve_app/params.py) as the result cache keys and runs
    them: prompts normalised as the key does it, and, for a request that named no seed, the
    seed derived from the key of everything else in place of its random one. Made from
    settings resolved once, whenever there is a cache: a tier may force the cache on after
    the request was resolved without it."""
    prompt = normalize_prompt(params.prompt, casefold)
    negative_prompt = normalize_prompt(params.negative_prompt, casefold)
    update: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative_prompt}
    if not seed_given:
        update["seed"] = derived_seed(model_identity, {**params.model_dump(), **update}, max_seed)
    return params.model_copy(update=update)
