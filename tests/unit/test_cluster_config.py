"""configs/serve_cluster.yaml and its GPU variant in docs/ray-cluster.md: valid, cluster-shaped, and what
tests/integration/test_serve_cluster.py deploys (the shipped file with only ports, folders and test knobs swapped)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import ServiceArgs
from serve_app.paths import CONFIG_DIR, PROJECT_ROOT
from tests.helpers.serve_cluster import cluster_config

CONFIG = CONFIG_DIR / "serve_cluster.yaml"
DOC = PROJECT_ROOT / "docs" / "ray-cluster.md"
MODEL_STAGES = ("prompt_encoder", "denoiser", "video_encoder")
# The deployments of serve_app/app.py (Serve names them after their classes).
DEPLOYMENT_OF_STAGE = {
    "gateway": "Gateway",
    "result_cache": "ResultCache",
    "prompt_encoder": "PromptEncoder",
    "denoiser": "Denoiser",
    "video_encoder": "VideoEncoder",
}


def shipped() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def app_of(config: dict) -> dict:
    (app,) = config["applications"]
    return app


def test_the_cluster_config_is_a_valid_serve_config_of_the_app():
    config = ServeDeploySchema.model_validate(shipped())
    assert config.proxy_location == "EveryNode"
    args = ServiceArgs.model_validate(app_of(shipped())["args"])
    args.tier_table()  # presets, tiers and model profile agree, as build_app checks
    assert args.model == "tiny"


def test_the_deployments_list_names_real_deployments_and_sets_placement_only():
    from deployments.denoiser import Denoiser
    from deployments.gateway import Gateway

    assert {Gateway.name, Denoiser.name} <= set(DEPLOYMENT_OF_STAGE.values())
    entries = app_of(shipped())["deployments"]
    assert {e["name"] for e in entries} <= set(DEPLOYMENT_OF_STAGE.values()), entries
    # Counts and resources belong to args.stages: a second source here could disagree with it.
    assert all(set(e) == {"name", "max_replicas_per_node"} for e in entries), entries


def test_replicated_stages_go_one_per_node_and_single_ones_to_the_head():
    app = app_of(shipped())
    args = ServiceArgs.model_validate(app["args"])
    per_node = {e["name"]: e["max_replicas_per_node"] for e in app["deployments"]}
    for stage, deployment in DEPLOYMENT_OF_STAGE.items():
        options = getattr(args.stages, stage)
        if options.max_replicas > 1:
            assert per_node.get(deployment) == 1, f"{stage}: {options.max_replicas} replicas, not spread"
            assert "head" not in options.resources, stage
        else:
            assert options.resources.get("head") == 1, f"{stage}: a single replica belongs on the head"


def test_state_is_shared_between_nodes():
    args = ServiceArgs.model_validate(app_of(shipped())["args"])
    assert args.job_store.startswith("redis://") and args.cache_store.startswith("redis://")
    assert args.access.store.startswith("redis://")
    assert args.artifact_store.startswith("s3://")
    assert args.checkpoint_dir and args.checkpoint_every_s > 0


def test_the_integration_test_deploys_the_shipped_file_with_only_its_ports_and_folders_swapped(tmp_path):
    test_knobs = {"faults": {"step_gate": "g"}, "checkpoint_every_s": 0.001, "dispatch_interval_s": 0.2}
    deployed = cluster_config(18000, tmp_path, "redis://127.0.0.1:16379/0", **test_knobs)
    original = shipped()
    assert deployed["http_options"]["port"] == 18000
    assert {k: v for k, v in deployed.items() if k not in ("http_options", "applications")} == {
        k: v for k, v in original.items() if k not in ("http_options", "applications")
    }
    assert {**deployed["http_options"], "port": original["http_options"]["port"]} == original["http_options"]
    args, shipped_args = app_of(deployed)["args"], app_of(original)["args"]
    swapped = {"data_dir", "checkpoint_dir", "job_store", "cache_store", "access", *test_knobs}
    assert {k: v for k, v in args.items() if k not in swapped} == {
        k: v for k, v in shipped_args.items() if k not in swapped
    }
    assert args["job_store"] == "redis://127.0.0.1:16379/0" and args["cache_store"] == "redis://127.0.0.1:16379/1"
    assert args["access"] == {**shipped_args["access"], "store": "redis://127.0.0.1:16379/2"}
    assert Path(args["checkpoint_dir"]).parent == tmp_path
    assert {k: v for k, v in app_of(deployed).items() if k != "args"} == {
        k: v for k, v in app_of(original).items() if k != "args"
    }
    ServiceArgs.model_validate(args)


def gpu_variant() -> dict:
    """The shipped args with the docs' GPU block (the ```yaml block under "## On GPUs") put in."""
    section = DOC.read_text().split("## On GPUs", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    return {**app_of(shipped())["args"], **yaml.safe_load(block)}


def test_the_documented_gpu_variant_is_valid_and_packs_one_card_per_node():
    args = ServiceArgs.model_validate(gpu_variant())
    args.tier_table()
    assert args.model_profile().device != "cpu"
    stages = {name: getattr(args.stages, name) for name in MODEL_STAGES}
    assert all(0 < s.num_gpus <= 1 for s in stages.values()), stages
    # The head's card: every single-replica model stage and one denoiser; a worker's: its denoiser.
    on_head = [s.num_gpus for s in stages.values() if s.resources.get("head")]
    assert sum(on_head) + stages["denoiser"].num_gpus <= 1.0 + 1e-9, stages
    # Replicated stages keep the one-per-node spread of the shipped file.
    assert args.stages.denoiser.num_replicas == args.stages.gateway.num_replicas == 2
