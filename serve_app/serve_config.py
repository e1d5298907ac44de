"""Check a serve config before `serve deploy`: what the replicas would refuse at start, said now.

    python -m serve_app.serve_config check configs/serve_gpu.yaml --gpus 1

For each application of this app (`import_path: serve_app.app:build_app`):
its `args` validate; each `deployments:` entry names a deployment of the app
and passes Ray's own schema; its `user_config` sets only that deployment's
live fields, with values `ServiceArgs` accepts (serve_app/live.py), and the
gateway's tiers fit the presets and model; its scaling and resource options
do not contradict `args` (serve_app/deploy_options.py). With `--gpus N`, the
model stages' replicas, at their most and with their effective GPU shares,
must fit N cards the way Ray places them: the multi-GPU denoiser's rank
bundles first (each replica's on distinct cards, as Serve's pack scheduling
orders the largest replicas first), then the single-GPU replicas, largest
first, each on the card it fits most tightly (Ray's best fit for fractions). Exit status 0 when all holds, 1
otherwise, with every problem listed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serve_app.config import ParallelDenoiserOptions, ServiceArgs, StageOptions
from serve_app.deploy_options import agreement, apply_overrides, builder_options
from serve_app.live import DEPLOYMENT_NAMES, LIVE_FIELDS, STAGE_OF_DEPLOYMENT, LiveConfigError, apply_user_config

IMPORT_PATH = "serve_app.app:build_app"
MODEL_STAGES = ("prompt_encoder", "denoiser", "video_encoder")


@dataclass
class AppCheck:
    """One application of a serve config, checked."""

    name: str
    args: ServiceArgs | None = None
    stages: dict[str, StageOptions] = field(default_factory=dict)  # as Ray will run them
    live: dict[str, ServiceArgs] = field(default_factory=dict)  # per stage: args with its user_config
    problems: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)


def _with_ray_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The options as Serve's details will show them: an autoscaling_config completed by Ray."""
    from ray.serve.config import AutoscalingConfig

    auto = options.get("autoscaling_config")
    if isinstance(auto, Mapping):
        options["autoscaling_config"] = AutoscalingConfig(**auto).model_dump(mode="json")
    return options


def _ray_schema_problem(entry: Mapping[str, Any]) -> str | None:
    from ray.serve.schema import DeploymentSchema

    try:
        DeploymentSchema.model_validate(dict(entry))
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
    return None


def check_app(app: Mapping[str, Any]) -> AppCheck:
    """`app`: one entry of a serve config's `applications:`."""
    result = AppCheck(str(app.get("name", "default")))
    try:
        args = result.args = ServiceArgs.model_validate(app.get("args") or {})
        args.model_profile()
        args.tier_table()
    except (ValidationError, ValueError, OSError) as exc:
        result.problems.append(f"args: {exc}")
        return result
    entries = {str(entry.get("name")): entry for entry in app.get("deployments") or []}
    for name in sorted(set(entries) - set(STAGE_OF_DEPLOYMENT)):
        result.problems.append(f"deployments: {name!r} is no deployment of this app ({sorted(STAGE_OF_DEPLOYMENT)})")
    deployed = args.stages.deployed()
    for stage, deployment in DEPLOYMENT_NAMES.items():
        if stage not in deployed:
            if deployment in entries:
                result.problems.append(
                    f"deployments: {deployment!r} is not deployed: set args.stages.{stage} to deploy it"
                )
            continue
        entry = entries.get(deployment, {"name": deployment})
        problem = _ray_schema_problem(entry)
        if problem is not None:
            result.problems.append(f"deployments: {deployment}: {problem}")
            continue
        try:
            live = result.live[stage] = apply_user_config(args, stage, entry.get("user_config"))
            if stage == "gateway":
                live.tier_table()  # inline tiers against the presets and the model, as the gateway checks them
        except (LiveConfigError, ValueError) as exc:
            result.problems.append(str(exc))
        effective = _with_ray_defaults(apply_overrides(builder_options(args, stage), entry))
        found = agreement(args, stage, effective, override=entry)
        result.problems += [f"deployments: {deployment}: {conflict}" for conflict in found.conflicts]
        result.adopted += [f"{deployment}: {adopted}" for adopted in found.adopted]
        result.stages[stage] = found.view
    return result


def check_config(config: Mapping[str, Any]) -> list[AppCheck]:
    """Every application of a parsed serve config that runs this app."""
    return [check_app(app) for app in config.get("applications") or [] if app.get("import_path") == IMPORT_PATH]


def folded_args(app: Mapping[str, Any]) -> ServiceArgs:
    """The args one application of a serve config amounts to, its `deployments:` entries folded
    in: for deploying it in-process with `serve.run(build_app(args))`, where a config's entries
    do not apply (benchmarks). ValueError when the config has problems, or when the model
    stages' user_configs set `health` differently (args hold one `health` for all three)."""
    check = check_app(app)
    if check.problems or check.args is None:
        raise ValueError(f"application {check.name!r}: " + "; ".join(check.problems))
    merged = check.args.model_dump()
    merged["stages"].update({stage: view.model_dump() for stage, view in check.stages.items()})
    healths = {
        check.live[stage].health.model_dump_json()
        for stage in (*MODEL_STAGES, "parallel_denoiser")
        if stage in check.live
    }
    if len(healths) > 1:
        raise ValueError(f"application {check.name!r}: the model stages' user_configs set `health` differently")
    for stage, live in check.live.items():
        dump = live.model_dump()
        merged.update({name: dump[name] for name in LIVE_FIELDS[stage]})
    return ServiceArgs.model_validate(merged)


def _best_fit(free: list[float], fraction: float, exclude: Collection[int] = ()) -> int | None:
    """The card Ray gives a fractional share: the one it fills most tightly (its best fit;
    a whole card: the first free one); None if none fits."""
    fits = [card for card in range(len(free)) if card not in exclude and free[card] + 1e-9 >= fraction]
    if not fits:
        return None
    if fraction >= 1:
        return fits[0]
    return min(fits, key=lambda card: (free[card] - fraction, card))


def gpu_placement(stages: Mapping[str, StageOptions], cards: int) -> list[list[str]] | None:
    """Ray-like placement of every model-stage replica, each at its deployment's most replicas
    and its GPU share, largest first; None if some replica finds no card.

    The multi-GPU denoiser's replicas go first, each rank on a card of its own (a fraction
    above one half, which its settings require, cannot share a card with another rank):
    that is the order Serve's pack scheduling (RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1)
    takes, largest replica first, and the only one in which fractional neighbours cannot
    fragment the cards the ranks need (docs/gpu.md, Multi-GPU replicas)."""
    free = [1.0] * cards
    placed: list[list[str]] = [[] for _ in range(cards)]
    parallel = stages.get("parallel_denoiser")
    if isinstance(parallel, ParallelDenoiserOptions) and parallel.gpu_share > 0:
        for _ in range(parallel.max_replicas):
            used: set[int] = set()
            for _rank in range(parallel.gpus):
                card = _best_fit(free, parallel.gpu_share, used)
                if card is None:
                    return None
                used.add(card)
                free[card] -= parallel.gpu_share
                placed[card].append("parallel_denoiser")
    replicas = sorted(
        ((stages[stage].num_gpus, stage) for stage in MODEL_STAGES for _ in range(stages[stage].max_replicas)),
        reverse=True,
    )
    for fraction, stage in replicas:
        card = _best_fit(free, fraction)
        if card is None:
            return None
        free[card] -= fraction
        placed[card].append(stage)
    return placed


def _report(check: AppCheck, gpus: int | None) -> list[str]:
    lines = [f"application {check.name!r}:"]
    if gpus is not None and check.args is not None and not check.problems:
        placement = gpu_placement(check.stages, gpus)
        if placement is None:
            shares: dict[str, tuple[float, int]] = {
                s: (check.stages[s].num_gpus, check.stages[s].max_replicas) for s in MODEL_STAGES
            }
            parallel = check.stages.get("parallel_denoiser")
            if isinstance(parallel, ParallelDenoiserOptions):
                shares[f"parallel_denoiser ({parallel.gpus} ranks each)"] = (parallel.gpu_share, parallel.max_replicas)
            check.problems.append(f"the model stages (GPU share, most replicas) {shares} do not fit {gpus} card(s)")
        else:
            lines.append(f"  fits {gpus} card(s): {placement}")
    for stage, view in check.stages.items():
        auto = view.autoscaling
        count = f"{auto.min_replicas}-{auto.max_replicas} replicas" if auto else f"{view.num_replicas} replica(s)"
        if isinstance(view, ParallelDenoiserOptions):
            lines.append(
                f"  {DEPLOYMENT_NAMES[stage]}: {count}, {view.gpus} ranks x (GPU {view.gpu_share:g}, CPU "
                f"{view.rank_cpus:g}) + coordinator CPU {view.num_cpus:g}, STRICT_PACK; jobs of >= "
                f"{view.min_latent_tokens} latent tokens"
            )
            continue
        lines.append(f"  {DEPLOYMENT_NAMES[stage]}: {count}, num_gpus {view.num_gpus:g}, num_cpus {view.num_cpus:g}")
    lines += [f"  from `deployments:`: {adopted}" for adopted in check.adopted]
    lines += [f"  PROBLEM: {problem}" for problem in check.problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.serve_config", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a serve config file; exit 1 on any problem")
    check.add_argument("path", type=Path, help="the serve config (YAML), e.g. configs/serve_gpu.yaml")
    check.add_argument("--gpus", type=int, default=None, help="also check that the model stages fit this many cards")
    options = parser.parse_args(argv)
    checks = check_config(yaml.safe_load(options.path.read_text()) or {})
    if not checks:
        print(f"{options.path}: no application with import_path {IMPORT_PATH}", file=sys.stderr)
        return 1
    lines = [line for app in checks for line in _report(app, options.gpus)]
    print("\n".join(lines))
    return 1 if any(app.problems for app in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
