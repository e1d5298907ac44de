"""Live settings: the `ServiceArgs` fields each deployment also takes from its Ray Serve `user_config`.

Ray Serve hashes an application's `args` into its code version: a `serve
deploy` that changes them builds the app again and restarts every replica,
the 5B models included. A deployment's `user_config` is outside that hash: a
deploy that changes only it calls `reconfigure(user_config)` on each running
replica, which keeps its model. So the knobs worth turning on a running
service (admission and tiers, access limits, the result cache's TTL and size,
the denoiser's progress interval, health thresholds) are read from there.

A user_config holds `ServiceArgs` fields under their own names, only those its
deployment reads (`LIVE_FIELDS`), so each deployment gets only its section:

    deployments:
      - name: Gateway
        user_config:
          admission: {max_queue_per_replica: 8, tiers: [{name: all, max_load: 1.0, max_steps: 20}]}
          access: {rate_per_s: 2, burst: 20}

Its values go over `args` (a section such as `admission` field by field;
lists, dicts and plain values whole) and the result is validated as
`ServiceArgs` again: a live value obeys exactly the rules it obeys in `args`,
and a bad one is an error that names the field, never a value silently kept.
Precedence, per field: the deployment's user_config, then `args`, then the
field's default. The app sets each deployment's user_config to its section of
`args` (`live_section`), which a `deployments:` entry's user_config replaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from serve_app.config import AdmissionConfig, HealthOptions, ServiceArgs

# args.stages key -> the Ray Serve deployment's name (its class's, as build_app binds them).
DEPLOYMENT_NAMES: dict[str, str] = {
    "gateway": "Gateway",
    "result_cache": "ResultCache",
    "prompt_encoder": "PromptEncoder",
    "denoiser": "Denoiser",
    "video_encoder": "VideoEncoder",
    # Deployed only when args.stages.parallel_denoiser is set (StagesConfig.deployed()).
    "parallel_denoiser": "ParallelDenoiser",
}
STAGE_OF_DEPLOYMENT = {name: stage for stage, name in DEPLOYMENT_NAMES.items()}

# The tier file is read where the app is built: a running gateway changes its
# tiers through the table written inline (`admission.tiers`).
ADMISSION_LIVE = frozenset(AdmissionConfig.model_fields) - {"tiers_file"}
# Limits and the keys they belong to. Not here: where limiter state lives
# (store, store_prefix), the key variable read at start, and what the request
# path fixes when the app is built (body size, hosts, origins).
ACCESS_LIVE = frozenset(
    {
        "api_keys",
        "rate_per_s",
        "burst",
        "read_rate_per_s",
        "read_burst",
        "max_concurrent_jobs",
        "concurrency_retry_after_s",
        "job_slot_lease_s",
        "limit_anonymous",
        "admin_rate_per_s",
        "admin_burst",
    }
)
# The check period and timeout are Ray's own options (health_check_period_s,
# health_check_timeout_s): set under `deployments:`, not in a user_config.
HEALTH_LIVE = frozenset(HealthOptions.model_fields) - {"check_period_s", "check_timeout_s"}

# Per stage: field -> None (the whole value is live) or the live fields of that section.
LIVE_FIELDS: dict[str, dict[str, frozenset[str] | None]] = {
    "gateway": {"admission": ADMISSION_LIVE, "access": ACCESS_LIVE},
    "result_cache": {"cache_ttl_s": None, "cache_max_bytes": None, "cache_inflight_ttl_s": None},
    "prompt_encoder": {"health": HEALTH_LIVE},
    "denoiser": {"progress_interval_s": None, "health": HEALTH_LIVE},
    "video_encoder": {"health": HEALTH_LIVE},
    "parallel_denoiser": {"progress_interval_s": None, "health": HEALTH_LIVE},
}


class LiveConfigError(ValueError):
    """A deployment's user_config that cannot be applied. Raised at replica start and by
    `reconfigure`, so the deploy fails with this message (Ray shows it in `serve status`)."""


def _where(stage: str) -> str:
    return f"user_config of deployment {DEPLOYMENT_NAMES[stage]!r}"


def live_fields(stage: str) -> list[str]:
    """The dotted names a stage's user_config may set, for messages and docs."""
    names: list[str] = []
    for field, section in LIVE_FIELDS[stage].items():
        names += [field] if section is None else [f"{field}.{sub}" for sub in sorted(section)]
    return names


def live_section(args: ServiceArgs, stage: str) -> dict[str, Any]:
    """`stage`'s live fields as `args` sets them (JSON-ready): the user_config build_app gives the deployment."""
    dump = args.model_dump(mode="json")
    out: dict[str, Any] = {}
    for field, section in LIVE_FIELDS[stage].items():
        out[field] = dump[field] if section is None else {k: v for k, v in dump[field].items() if k in section}
    return out


def _refuse_fields_that_are_not_live(stage: str, user_config: Mapping[str, Any]) -> None:
    live = LIVE_FIELDS[stage]
    wrong: list[str] = []
    for field, value in user_config.items():
        if field not in live:
            wrong.append(str(field))
            continue
        section = live[field]
        if section is None:
            continue
        if not isinstance(value, Mapping):
            raise LiveConfigError(
                f"{_where(stage)}: {field} must be a mapping of its fields, got {type(value).__name__}"
            )
        wrong += [f"{field}.{sub}" for sub in value if sub not in section]
    if wrong:
        raise LiveConfigError(
            f"{_where(stage)} sets {', '.join(sorted(wrong))}, which this deployment does not take live: set "
            "it in the app's args instead (a change there rebuilds the app and restarts its replicas). Live "
            f"fields here: {', '.join(live_fields(stage))}"
        )


def apply_user_config(args: ServiceArgs, stage: str, user_config: Any) -> ServiceArgs:
    """`args` with `stage`'s user_config over it, validated as ServiceArgs; None leaves `args` as they are.

    Raises LiveConfigError naming every field at fault (values are never quoted: an
    access section may hold what was pasted into it)."""
    if user_config is None:
        return args
    if not isinstance(user_config, Mapping):
        raise LiveConfigError(f"{_where(stage)} must be a mapping of field: value, got {type(user_config).__name__}")
    _refuse_fields_that_are_not_live(stage, user_config)
    merged = args.model_dump()
    for field, value in user_config.items():
        merged[field] = value if LIVE_FIELDS[stage][field] is None else {**merged[field], **value}
    try:
        return ServiceArgs.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
        raise LiveConfigError(f"{_where(stage)} is invalid: {problems}") from None
