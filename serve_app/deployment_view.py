"""What a replica learns from Ray Serve at start: the user_config it starts with, and the
options its deployment and its neighbours really run with (a serve config's `deployments:`
entries over what build_app asked for).

Every deployment calls `start_args` first thing in its constructor: a bad user_config or a
scaling option set in two places fails the replica there, before any model loads, and the
deploy ends in DEPLOY_FAILED with the message (`serve status`). Outside a replica (unit tests,
benchmarks that build the deployments in-process) there is nothing to read and nothing is
checked. The rules themselves are Ray-free: serve_app/live.py and serve_app/deploy_options.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.config import ServiceArgs, StageOptions
from serve_app.deploy_options import Agreement, agreement
from serve_app.live import DEPLOYMENT_NAMES, apply_user_config

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class StartArgs:
    """A replica's settings at start."""

    base: ServiceArgs  # the app's args, as build_app bound them
    args: ServiceArgs  # with the deployment's user_config over them (serve_app/live.py)
    view: StageOptions  # its own args.stages entry with the options `deployments:` set (adopted)


def _replica_context() -> Any | None:
    try:
        from ray import serve

        return serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not in a replica (or no Ray at all): nothing to read
        return None


def start_args(payload: Mapping[str, Any], stage: str) -> StartArgs:
    """`payload` (build_app's `args`) as ServiceArgs, with this replica's user_config applied
    and its deployment's effective Ray options checked against them (raises on a conflict)."""
    base = ServiceArgs(**payload)
    context = _replica_context()
    if context is None:
        return StartArgs(base, base, getattr(base.stages, stage))
    user_config = getattr(getattr(context, "_deployment_config", None), "user_config", None)
    args = apply_user_config(base, stage, user_config)
    found = check_own_options(base, stage, context.app_name)
    return StartArgs(base, args, found.view if found is not None else getattr(base.stages, stage))


def serve_deployment_options(app_name: str) -> dict[str, dict[str, Any]] | None:
    """Deployment name -> the options Serve runs it with (DeploymentSchema-shaped, as `serve status -v`
    and the dashboard show them); None when Serve's details cannot be read."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        assert client is not None  # it raises rather than return None when Serve is not running
        deployments = client.get_serve_details()["applications"][app_name]["deployments"]
        return {name: dict(info["deployment_config"]) for name, info in deployments.items()}
    except Exception:  # the check is a guard, never a reason not to start
        log.warning("could not read Serve's deployment options of app %r; not checking them", app_name, exc_info=True)
        return None


def check_own_options(args: ServiceArgs, stage: str, app_name: str) -> Agreement | None:
    """This deployment's effective options against `args`: ValueError on a conflict; adopted
    options are logged (they change what the app goes by: its view)."""
    options = serve_deployment_options(app_name)
    deployment = DEPLOYMENT_NAMES[stage]
    if options is None or deployment not in options:
        return None
    found = agreement(args, stage, options[deployment])
    found.raise_on_conflict()
    if found.adopted:
        log.info(
            "%s runs with options set under the serve config's `deployments:`, not in args: %s",
            deployment,
            "; ".join(found.adopted),
        )
    return found


def stage_views(args: ServiceArgs, app_name: str, stages: tuple[str, ...]) -> dict[str, StageOptions]:
    """`args.stages` of `stages` as Serve runs them (for the gateway's figures of its neighbours).
    A neighbour's conflicts are its own to refuse; here they only leave its args entry as it is."""
    options = serve_deployment_options(app_name) or {}
    views = {}
    for stage in stages:
        effective = options.get(DEPLOYMENT_NAMES[stage])
        views[stage] = getattr(args.stages, stage) if effective is None else agreement(args, stage, effective).view
    return views
