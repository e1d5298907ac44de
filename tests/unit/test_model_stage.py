"""ModelStage, the Ray Serve shell around a ModelWorker: built by its own constructor.

The tiny model on the CPU, no Ray. What the worker does (the model thread,
OOM recovery, health, warm-up) is tests/unit/test_model_worker.py's; here:
the stage loads its slice of the pipeline, hands model work to its worker,
and reports to /healthz the keys that the gateway, bench/gpu_e2e.py and
operators read.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from deployments.base import ModelStage
from serve_app import metrics

# /healthz's per-stage description, in the order it has always been shown.
DESCRIBE_KEYS = [
    "model",
    "device",
    "dtype",
    "attention_backend",
    "load_s",
    "startup_phases",
    "gpu_memory_fraction",
    "health",
    "oom",
    "compile_cache",
    "warmup_s",
    "compile_cache_hits",
    "warmup_pending",
]


class TinyVideoEncoder(ModelStage):
    stage = "video_encoder"


@pytest.fixture
def stage(data_dir, monkeypatch):
    # The constructor turns metrics on for its process; this one has no Ray to report to.
    monkeypatch.setattr(metrics, "_enabled", False)
    built = TinyVideoEncoder({"data_dir": str(data_dir), "compile_cache_dir": "off"})
    yield built
    built.close()


def test_the_constructor_loads_its_slice_and_starts_a_worker(stage):
    assert stage.pipe.vae is not None and stage.pipe.transformer is None
    assert stage.device == "cpu" and stage.load_s > 0

    def work(a, b):
        return a + b, threading.current_thread().name

    total, thread = asyncio.run(stage.run_model(work, 2, 3))
    assert total == 5 and thread.startswith("video_encoder-model")


def test_describe_shows_the_model_and_the_workers_record(stage):
    asyncio.run(stage.check_health())  # on the CPU: passes
    ran = []
    stage.warm_up([("decode 64x64", lambda: ran.append(1))], before_ready=1)
    info = asyncio.run(stage.describe())
    assert list(info) == DESCRIBE_KEYS
    assert info["model"] == stage.profile.identity and info["device"] == "cpu"
    assert info["dtype"] == stage.profile.vae_dtype
    assert info["load_s"] == round(stage.load_s, 3) and info["gpu_memory_fraction"] is None
    # Start-up phases from before the worker existed: compile cache, GPU init, then loading's own.
    assert {"compile_cache", "gpu_init", "import_diffusers"} <= set(info["startup_phases"])
    assert info["compile_cache"] == {}
    assert info["health"]["healthy"] is True and info["oom"] == {}
    assert set(info["warmup_s"]) == {"decode 64x64"} and info["warmup_pending"] == [] and ran == [1]


def test_close_stops_the_model_thread(stage):
    assert asyncio.run(stage.run_model(lambda: "before")) == "before"
    stage.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(stage.run_model(lambda: "after"))
    stage.close()  # twice: harmless (the fixture closes it again)
