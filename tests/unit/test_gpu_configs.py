"""The GPU serve configs: valid, and their fractional packings fit the cards they are written for.

The packing is checked on the options Ray will run (serve_app/serve_config.py): a serve config's
`deployments:` entries over what the app's args ask for, as Ray merges them.
"""

from __future__ import annotations

import pytest
import yaml

from serve_app.paths import CONFIG_DIR
from serve_app.serve_config import AppCheck, check_config, gpu_placement

# config file -> cards it packs
GPU_CONFIGS = {
    "serve_gpu.yaml": 1,
    "serve_gpu_2x.yaml": 2,
    "serve_gpu_2x_parallel.yaml": 2,
    "serve_gpu_4x.yaml": 4,
    "serve_gpu_8x.yaml": 8,
}
MODEL_STAGES = ("prompt_encoder", "denoiser", "video_encoder")


def load(name: str) -> AppCheck:
    [app] = check_config(yaml.safe_load((CONFIG_DIR / name).read_text()))
    assert not app.problems, app.problems
    return app


@pytest.mark.parametrize("name, cards", GPU_CONFIGS.items())
def test_gpu_config_packs_its_cards(name, cards):
    stages = load(name).stages
    for stage in MODEL_STAGES:
        options = stages[stage]
        assert 0 < options.num_gpus <= 1, f"{stage} runs on a GPU"
        assert options.memory_fraction == (options.num_gpus if options.num_gpus < 1 else None)
    placement = gpu_placement(stages, cards)
    shares = {stage: (stages[stage].num_gpus, stages[stage].max_replicas) for stage in MODEL_STAGES}
    assert placement is not None, f"{name}: {shares} does not fit {cards} card(s)"
    # Denoisers never share a card: each one added is a card's worth of DiT throughput.
    assert all(card.count("denoiser") <= 1 for card in placement), placement


def test_two_card_config_scales_the_denoiser_on_queue_depth_to_both_cards():
    denoiser = load("serve_gpu_2x.yaml").stages["denoiser"]
    assert denoiser.autoscaling.policy == "queue_depth"
    assert denoiser.autoscaling.max_replicas == 2
    # Above one half: two denoisers on one card are impossible for Ray's scheduler.
    assert denoiser.num_gpus > 0.5


def test_the_packing_sees_a_share_raised_under_deployments():
    # The view the packing goes by is the effective one: a denoiser raised to 0.8 of the card
    # under `deployments:` no longer fits beside the other two stages on one card.
    config = yaml.safe_load((CONFIG_DIR / "serve_gpu.yaml").read_text())
    [denoiser] = [d for d in config["applications"][0]["deployments"] if d["name"] == "Denoiser"]
    denoiser["ray_actor_options"]["num_gpus"] = 0.8
    [app] = check_config(config)
    assert app.stages["denoiser"].num_gpus == 0.8 and app.stages["denoiser"].memory_fraction == 0.8
    assert gpu_placement(app.stages, 1) is None
    assert gpu_placement(app.stages, 2) is not None
