"""Each deployment's Ray Serve options: what build_app asks for, and whether a serve config's
`deployments:` entry agrees with it.

Precedence (Ray Serve's own rule; the app cannot change it): an option set in
the serve config's `applications[].deployments[]` entry wins over what
build_app passes from `args.stages` (and `args.health` for the health-check
period and timeout), which wins over Ray's default. Note that an entry's
`ray_actor_options` replaces the app's whole `ray_actor_options`, and Ray then
reserves 1 CPU unless it names `num_cpus`.

One source of truth: each option is set in one place. `agreement` compares
the options a deployment really runs with (Ray's effective values: from
Serve's details in a replica, or `apply_overrides` over a config file) with
`args.stages`. An option that `deployments:` sets and `args` leaves at its
default is adopted: the app's own view of the stage (`Agreement.view`: the
GPU share its allocator is capped to, the packing check, the gateway's
replica figures) takes the effective value. An option set in both places
to different values is a conflict, and so is one Ray would silently ignore;
the replica refuses to start with a message naming both places, and
`python -m serve_app.serve_config check` says so before a deploy.

Ray-free: the replica side (reading Serve's details) is serve_app/deployment_view.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.config import AutoscalingOptions, ServiceArgs, StageOptions
from serve_app.live import DEPLOYMENT_NAMES

QUEUE_DEPTH_POLICY = "serve_app.policy.autoscaling:QueueDepthPolicy"
AUTOSCALING_KEYS = (
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "downscale_to_zero_delay_s",
    "look_back_period_s",
)
# Ray option (flattened) -> where args sets it, for a stage named `stage`.
_ARGS_PATHS = {
    "num_replicas": "stages.{stage}.num_replicas",
    "max_ongoing_requests": "stages.{stage}.max_ongoing_requests",
    "graceful_shutdown_timeout_s": "stages.{stage}.graceful_shutdown_timeout_s",
    "num_cpus": "stages.{stage}.num_cpus",
    "num_gpus": "stages.{stage}.num_gpus",
    "resources": "stages.{stage}.resources",
    "autoscaling.policy": "stages.{stage}.autoscaling.policy",
    **{f"autoscaling.{k}": f"stages.{{stage}}.autoscaling.{k}" for k in AUTOSCALING_KEYS},
    "health_check_period_s": "health.check_period_s",
    "health_check_timeout_s": "health.check_timeout_s",
}
# Options the app derives from several args fields (the parallel denoiser's placement group, from
# its gpus, gpu_share, rank_cpus, num_cpus and resources): never adopted from `deployments:`,
# since the replica starts its ranks from args. Set there to something else, they are a conflict.
DERIVED = {
    "placement_group_bundles": "gpus, gpu_share, rank_cpus, num_cpus and resources",
    "placement_group_strategy": "nothing (it is always STRICT_PACK: every rank on the replica's node)",
}
# How a `deployments:` entry spells each flattened option.
_RAY_SPELLING = {
    **{f"autoscaling.{k}": f"autoscaling_config.{k}" for k in AUTOSCALING_KEYS},
    "autoscaling.policy": "autoscaling_config.policy",
    "num_cpus": "ray_actor_options.num_cpus",
    "num_gpus": "ray_actor_options.num_gpus",
    "resources": "ray_actor_options.resources",
}


def gateway_options(args: ServiceArgs) -> dict[str, Any]:
    """The gateway's Ray Serve options.

    When a stage scales on queue depth, the gateways report the jobs waiting
    for a dispatcher (serve_app/policy/autoscaling.py). Ray asks a replica
    for such figures, and shows them to the application-level policy, only
    if its deployment has an autoscaling_config: a gateway with a fixed count
    gets one whose bounds pin that count.
    """
    options = args.deployment_options("gateway")
    look_back_s = args.stages.queue_depth_look_back_s()
    if look_back_s is not None and "autoscaling_config" not in options:
        count = options.pop("num_replicas")
        options["autoscaling_config"] = {
            "min_replicas": count,
            "max_replicas": count,
            "look_back_period_s": look_back_s,
        }
    return options


def builder_options(args: ServiceArgs, stage: str) -> dict[str, Any]:
    """What build_app passes to `.options()` for `stage` (its user_config aside)."""
    return gateway_options(args) if stage == "gateway" else args.deployment_options(stage)


def flatten(options: Mapping[str, Any]) -> dict[str, Any]:
    """Ray Serve options (as build_app passes them, as a `deployments:` entry writes them, or
    as Serve's details show them) under the names above; what is not set is left out."""
    flat: dict[str, Any] = {}
    for key in ("num_replicas", "max_ongoing_requests", "graceful_shutdown_timeout_s"):
        if options.get(key) is not None:
            flat[key] = options[key]
    for key in ("health_check_period_s", "health_check_timeout_s", "placement_group_strategy"):
        if options.get(key) is not None:
            flat[key] = options[key]
    if options.get("placement_group_bundles") is not None:
        flat["placement_group_bundles"] = [
            {name: float(amount) for name, amount in bundle.items()} for bundle in options["placement_group_bundles"]
        ]
    auto = options.get("autoscaling_config")
    if auto is not None:
        auto = auto if isinstance(auto, Mapping) else auto.model_dump()
        for key in AUTOSCALING_KEYS:
            if auto.get(key) is not None:
                flat[f"autoscaling.{key}"] = auto[key]
        flat["autoscaling.policy"] = _policy_name(auto.get("policy"))
    actor = options.get("ray_actor_options")
    if actor is not None:
        flat["num_cpus"] = actor.get("num_cpus")
        flat["num_gpus"] = actor.get("num_gpus") or 0.0
        flat["resources"] = dict(actor.get("resources") or {})
    return flat


def _policy_name(policy: Any) -> str:
    """'queue_depth' (the app's QueueDepthPolicy), 'ongoing_requests' (Ray's default) or the function's path."""
    function = policy.get("policy_function") if isinstance(policy, Mapping) else getattr(policy, "policy_function", "")
    name = "" if function is None else str(function)
    if name.endswith(":QueueDepthPolicy"):
        return "queue_depth"
    if not name or name.endswith(":default_autoscaling_policy"):
        return "ongoing_requests"
    return name


def apply_overrides(options: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with a serve config's `deployments:` entry over them, as Ray merges them
    (ray/serve/_private/application_state.py, override_deployment_info): options the entry
    names replace the app's whole, `ray_actor_options` included, which then default to 1 CPU."""
    merged = {k: v for k, v in options.items()}
    for key, value in entry.items():
        if key in ("name", "user_config"):
            continue
        merged[key] = dict(value) if isinstance(value, Mapping) else value
    if "ray_actor_options" in entry and merged["ray_actor_options"].get("num_cpus") is None:
        merged["ray_actor_options"]["num_cpus"] = 1
    return merged


@dataclass
class Agreement:
    """How one deployment's effective Ray options square with `args`."""

    stage: str
    view: StageOptions  # args.stages.<stage> with the adopted options: what the app goes by
    conflicts: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)

    def raise_on_conflict(self) -> None:
        if self.conflicts:
            raise ValueError(
                f"deployment {DEPLOYMENT_NAMES[self.stage]!r}: scaling and resources have one source, and here "
                f"two disagree: {'; '.join(self.conflicts)}. Keep each option in one place: the serve config's "
                "`deployments:` entry or the app's args (docs/operations.md, Live retuning)"
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _explicit(args: ServiceArgs, path: str) -> bool:
    """Whether `args` sets the dotted `path` itself (rather than leaving it to its default)."""
    node: Any = args
    for part in path.split("."):
        if node is None or part not in getattr(node, "model_fields_set", ()):
            return False
        node = getattr(node, part)
    return True


# Autoscaling options Ray leaves unset by default: a value of one is always someone's.
_UNSET_BY_RAY = ("autoscaling.initial_replicas", "autoscaling.downscale_to_zero_delay_s")


def _changes(built: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Options whose effective value differs from the app's: (the app's, the effective one).

    Only options the app sets are compared (Ray fills the rest with its defaults, which
    say nothing of a `deployments:` entry), except those Ray leaves unset, and a whole
    autoscaling_config the app did not ask for: every value of it is the entry's."""
    new_block = "autoscaling.max_replicas" in now and "autoscaling.max_replicas" not in built
    changes = {}
    for key, value in now.items():
        if key not in _ARGS_PATHS:
            continue
        if key in built or key in _UNSET_BY_RAY or (new_block and key.startswith("autoscaling.")):
            if not _same(built.get(key), value):
                changes[key] = (built.get(key), value)
    return changes


def _args_path(options: StageOptions, stage: str, key: str) -> str:
    """Where args sets a flattened option: a replica bound the app derived from a fixed count
    (none set, or the gateway's pinned bounds) comes from that count."""
    if key.startswith("autoscaling.") and options.autoscaling is None:
        return f"stages.{stage}.num_replicas"
    return _ARGS_PATHS[key].format(stage=stage)


def agreement(
    args: ServiceArgs, stage: str, effective: Mapping[str, Any], override: Mapping[str, Any] | None = None
) -> Agreement:
    """Compare `stage`'s effective Ray options with the app's.

    `effective`: the options the deployment runs with, Ray-shaped (Serve's details of it, or
    `apply_overrides` with Ray's defaults filled in). `override`: the `deployments:` entry
    itself, where known (a config file): only it shows a replica count Ray ignores beside an
    autoscaling_config."""
    options: StageOptions = getattr(args.stages, stage)
    built, now = flatten(builder_options(args, stage)), flatten(effective)
    result = Agreement(stage, options)
    if override is not None and override.get("num_replicas") is not None and "autoscaling.max_replicas" in now:
        count = override["num_replicas"]
        result.conflicts.append(
            "num_replicas: auto is not read by the app; write its autoscaling_config out"
            if count == "auto"
            else f"`deployments:` sets num_replicas={count}, which Ray ignores beside the deployment's "
            f"autoscaling_config (set bounds in autoscaling_config, or the count in args.stages.{stage})"
        )
    changes = _changes(built, now)
    for key, source in DERIVED.items():
        if key in now and not _same(built.get(key), now[key]):
            changes.pop(key, None)
            result.conflicts.append(
                f"{key}={now[key]!r} under `deployments:`, but the app derives it from args.stages.{stage}: "
                f"set {source} there"
            )
    was, policy = changes.pop("autoscaling.policy", (None, None))
    if "queue_depth" in (was, policy):
        result.conflicts.append(
            f"the autoscaling policy is {policy!r} under `deployments:` but {was or 'none'!r} in args: the app "
            f"wires queue_depth itself (the gateways' reports), so choose it in args.stages.{stage}.autoscaling"
        )
    update: dict[str, Any] = {}
    for key, (was, value) in sorted(changes.items()):
        path = _args_path(options, stage, key)
        spelled = _RAY_SPELLING.get(key, key)
        if _explicit(args, path):
            mine = _args_value(args, path)
            result.conflicts.append(f"{spelled}={value!r} under `deployments:` but args.{path}={mine!r}")
        else:
            default = "" if was is None else f", {was!r}"
            result.adopted.append(f"{spelled}={value!r} (args leave {path} at its default{default})")
            update[key] = value
    result.view = _view(options, update, result)
    return result


def _args_value(args: ServiceArgs, path: str) -> Any:
    node: Any = args
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _view(options: StageOptions, update: Mapping[str, Any], result: Agreement) -> StageOptions:
    plain = {k: v for k, v in update.items() if not k.startswith("autoscaling.") and not k.startswith("health_")}
    auto = {k.split(".", 1)[1]: v for k, v in update.items() if k.startswith("autoscaling.")}
    if auto:
        base = options.autoscaling.model_dump() if options.autoscaling is not None else {}
        known = {k: v for k, v in {**base, **auto}.items() if k in AutoscalingOptions.model_fields}
        try:
            plain["autoscaling"] = AutoscalingOptions(**known)
        except ValueError as exc:
            result.conflicts.append(f"the effective autoscaling_config is not one the app can follow: {exc}")
            return options
    if "num_cpus" in plain and plain["num_cpus"] is None:
        plain.pop("num_cpus")
    return options.model_copy(update=plain)
