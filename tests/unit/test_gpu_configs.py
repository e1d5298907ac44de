"""The GPU serve configs: valid, and their fractional packings fit the cards they are written for."""

from __future__ import annotations

import pytest
import yaml

from serve_app.config import ServiceArgs
from serve_app.paths import CONFIG_DIR
from tests.helpers.gpu_packing import MODEL_STAGES, first_fit

# config file -> cards it packs
GPU_CONFIGS = {"serve_gpu.yaml": 1, "serve_gpu_2x.yaml": 2}


def load(name: str) -> ServiceArgs:
    raw = yaml.safe_load((CONFIG_DIR / name).read_text())["applications"][0]["args"]
    return ServiceArgs.model_validate(raw)


@pytest.mark.parametrize("name, cards", GPU_CONFIGS.items())
def test_gpu_config_packs_its_cards(name, cards):
    args = load(name)
    fractions, names = [], []
    for stage in MODEL_STAGES:
        options = args.stages.__getattribute__(stage)
        assert 0 < options.num_gpus <= 1, f"{stage} runs on a GPU"
        assert options.memory_fraction == (options.num_gpus if options.num_gpus < 1 else None)
        fractions += [options.num_gpus] * options.max_replicas
        names += [stage] * options.max_replicas
    placement = first_fit(fractions, cards, names)
    assert placement is not None, f"{name}: {dict(zip(names, fractions))} does not fit {cards} card(s)"
    # Denoisers never share a card: each one added is a card's worth of DiT throughput.
    assert all(card.count("denoiser") <= 1 for card in placement), placement


def test_two_card_config_scales_the_denoiser_on_queue_depth_to_both_cards():
    denoiser = load("serve_gpu_2x.yaml").stages.denoiser
    assert denoiser.autoscaling.policy == "queue_depth"
    assert denoiser.autoscaling.max_replicas == 2
    # Above one half: two denoisers on one card are impossible for Ray's scheduler.
    assert denoiser.num_gpus > 0.5
