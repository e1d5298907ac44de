"""Markdown reference of every config knob, generated from the pydantic models.

    python -m serve_app.config_doc            # prints what docs/configuration.md's reference holds
    python -m serve_app.config_doc --write    # puts it into docs/configuration.md

A unit test keeps that copy equal to this output.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from serve_app.config import (
    AdmissionConfig,
    AutoscalingOptions,
    GenerationLimits,
    ModelProfile,
    Preset,
    ServiceArgs,
    StageOptions,
)
from serve_app.live import DEPLOYMENT_NAMES, live_fields
from serve_app.settings.access import AccessConfig, ApiKeyEntry
from serve_app.settings.faults import FaultInjection
from serve_app.settings.health import HealthOptions
from serve_app.settings.image_input import ImageInputOptions
from serve_app.settings.redis import RedisClientOptions
from serve_app.settings.speed import BatchingOptions, FastKnobs, SpeedOptions
from serve_app.settings.stages import ParallelDenoiserOptions
from serve_app.settings.streams import StreamOptions
from serve_app.settings.tiers import Tier

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("`args:` of serve_config.yaml (ServiceArgs)", ServiceArgs),
    ("`args.stages.<gateway|prompt_encoder|denoiser|video_encoder>` (StageOptions)", StageOptions),
    ("`...autoscaling` (AutoscalingOptions)", AutoscalingOptions),
    ("`args.stages.parallel_denoiser`, the multi-GPU denoiser (ParallelDenoiserOptions)", ParallelDenoiserOptions),
    ("`args.admission` (AdmissionConfig)", AdmissionConfig),
    ("Tiers, configs/tiers.yaml `tiers:` (Tier)", Tier),
    ("`args.access` (AccessConfig)", AccessConfig),
    ("`args.access.api_keys[]` (ApiKeyEntry)", ApiKeyEntry),
    ("`args.streams` (StreamOptions)", StreamOptions),
    ("`args.image_input` (ImageInputOptions)", ImageInputOptions),
    ("`args.health` (HealthOptions)", HealthOptions),
    ("`args.redis` (RedisClientOptions)", RedisClientOptions),
    ("`args.faults`, test-only (FaultInjection)", FaultInjection),
    ("Model profiles, configs/models/*.yaml (ModelProfile)", ModelProfile),
    ("`speed:` of a model profile (SpeedOptions)", SpeedOptions),
    ("`speed.batching` (BatchingOptions)", BatchingOptions),
    ("`speed.fast`, and a fast tier's per-request knobs (FastKnobs)", FastKnobs),
    ("`limits:` of configs/presets.yaml (GenerationLimits)", GenerationLimits),
    ("`presets.<name>` of configs/presets.yaml (Preset)", Preset),
]


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        return f"`{field.default!r}`"
    if field.default_factory is not None:
        return "(see below)" if isinstance(field.default_factory(), BaseModel) else f"`{field.default_factory()!r}`"
    return "required"


def _live_table() -> list[str]:
    """Which `args` fields each deployment also takes from its user_config (serve_app/live.py)."""
    lines = [
        "## Live settings: `deployments[].user_config` (serve_app/live.py)",
        "",
        "The fields each deployment also takes from its Ray Serve `user_config`, under their `args` names: a "
        "`serve deploy` that changes only those retunes the running replicas (docs/operations.md, Live retuning).",
        "",
        "| deployment | live fields |",
        "| --- | --- |",
    ]
    for stage, deployment in DEPLOYMENT_NAMES.items():
        lines.append(f"| `{deployment}` | {', '.join(f'`{name}`' for name in live_fields(stage))} |")
    return [*lines, ""]


def render() -> str:
    lines: list[str] = []
    for title, model in SECTIONS:
        lines += [f"## {title}", "", "| field | default | meaning |", "| --- | --- | --- |"]
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {_default(field)} | {description} |")
        lines.append("")
        if model is ServiceArgs:
            lines += _live_table()
    return "\n".join(lines).rstrip() + "\n"


# Only the block between the markers is generated; the page around it is written by hand.
DOC_PATH = "docs/configuration.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def reference_block(doc: str) -> str:
    return doc[doc.index(START) + len(START) : doc.index(END)]


def write_reference(path) -> None:
    doc = path.read_text()
    path.write_text(doc.replace(START + reference_block(doc), START + render()))


if __name__ == "__main__":
    import sys

    from serve_app.paths import PROJECT_ROOT

    if "--write" in sys.argv:
        write_reference(PROJECT_ROOT / DOC_PATH)
    else:
        print(render(), end="")
