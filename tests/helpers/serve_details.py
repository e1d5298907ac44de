"""Serve's view of an app's deployments without a cluster: Ray's own merge of a serve config's
`deployments:` entries over what build_app asks for, and Ray's own schema of the result.

What a replica reads at start (serve_app/deployment_view.py reads Serve's details), made
here by the same Ray functions the controller runs, so the rules can be tested against the
Ray that is installed rather than against a copy of its behaviour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from serve_app.app import stage_options
from serve_app.config import ServiceArgs
from serve_app.live import DEPLOYMENT_NAMES


def serve_details(args: ServiceArgs, entries: Iterable[Mapping[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """Deployment name -> its `deployment_config` as `serve status -v` would show it."""
    from ray import serve
    from ray.serve._private.application_state import override_deployment_info
    from ray.serve._private.deployment_info import DeploymentInfo
    from ray.serve.schema import ServeApplicationSchema, _deployment_info_to_schema

    @serve.deployment
    class Stage:
        pass

    tiers = args.tier_table()
    infos = {}
    for stage in args.stages.deployed():
        name = DEPLOYMENT_NAMES[stage]
        built = Stage.options(name=name, **stage_options(args, stage, tiers))
        infos[name] = DeploymentInfo(
            deployment_config=built._deployment_config,
            replica_config=built._replica_config,
            start_time_ms=0,
            deployer_job_id="test",
        )
    config = ServeApplicationSchema(
        name="app", import_path="serve_app.app:build_app", deployments=[dict(e) for e in entries]
    )
    merged = override_deployment_info(infos, config)
    return {
        name: _deployment_info_to_schema(name, info).model_dump(mode="json", exclude_unset=True)
        for name, info in merged.items()
    }
