"""`retune_gateway`: a running gateway takes new admission, tier and access settings.

The gateway deployment calls it from Ray Serve's `reconfigure` with its args and
user_config merged (serve_app/live.py). Everything that can refuse the change
is checked first; then every part switches over in one go, with no await in
between, so a request on the replica's event loop sees the old settings or
the new ones, never half of each.
"""

from __future__ import annotations

from dataclasses import replace

from serve_app.api.gateway_app import GatewayApp
from serve_app.config import ServiceArgs
from serve_app.live import LiveConfigError
from serve_app.policy.tiers import lowest_tier
from serve_app.settings.tiers import TierTable


def retune_gateway(gateway: GatewayApp, args: ServiceArgs, file_tiers: TierTable) -> None:
    """Apply `args`' admission (tiers included) and access settings to `gateway`.

    `file_tiers`: the table the gateway started with from `admission.tiers_file`, which
    applies when `args` write none inline (the file is not read again). Raises
    LiveConfigError, changing nothing, when the tiers do not fit the presets or model, or
    the keys would turn auth on or off (which hosts the gateway answers is fixed at start)."""
    settings = gateway.settings
    tiers = TierTable(tiers=args.admission.tiers) if args.admission.tiers is not None else file_tiers
    try:
        tiers.check(settings.catalog.limits, settings.profile.speed.optimized_loop, settings.profile.speed)
    except ValueError as exc:
        raise LiveConfigError(f"user_config of deployment 'Gateway': admission.tiers: {exc}") from None
    guard = gateway.guard
    if guard is not None:
        try:
            guard.retune(args.access)
        except ValueError as exc:
            raise LiveConfigError(f"user_config of deployment 'Gateway': access: {exc}") from None
    # Nothing below raises.
    if gateway.admission is not None:
        gateway.admission.config, gateway.admission.tiers = args.admission, tiers
    gateway.views.eta.config = args.admission
    gateway.load.refresh_s = args.admission.refresh_s
    gateway.runner.lower_memory = lowest_tier(tiers)
    gateway.app.state.admin_access.config = args.access
    gateway.settings = replace(settings, args=args, tiers=tiers)
