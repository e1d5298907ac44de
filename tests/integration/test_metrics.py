"""The metrics endpoint after a few jobs: every service metric there, with sane values."""

from __future__ import annotations

import pytest
from ray._common.test_utils import wait_for_condition

from tests.helpers.app import ADMIN_KEY, APP_NAME
from tests.helpers.metrics import samples, scrape, total

pytestmark = pytest.mark.integration

SMALL = {"width": 64, "height": 64, "num_frames": 9, "num_inference_steps": 3, "fps": 8}


def test_metrics_after_a_few_jobs(client):
    body = {"prompt": "metrics please", **SMALL}
    client.post("/v1/videos", json=body)  # a miss that generates
    client.post("/v1/videos", json=body)  # a hit
    client.post("/v1/videos", json={**body, "prompt": "metrics again", "seed": 4})
    client.get("/v1/cache/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def checks(text: str) -> dict[str, bool]:
        return {
            "jobs completed": total(text, "wan_jobs_total", 'status="completed"') >= 2,
            **{
                f"stage {stage}": total(text, "wan_stage_seconds_count", f'stage="{stage}"') >= 2
                for stage in ("prompt_encode", "denoise", "decode", "encode", "total")
            },
            "denoise time": total(text, "wan_stage_seconds_sum", 'stage="denoise"') > 0,
            "steps": total(text, "wan_step_seconds_count") >= 2 * SMALL["num_inference_steps"],
            "queue wait": total(text, "wan_queue_wait_seconds_count") >= 2,
            "cache hits": total(text, "wan_cache_hits_total") >= 1,
            "cache misses": total(text, "wan_cache_misses_total") >= 2,
            "cache fills": total(text, "wan_cache_fills_total") >= 2,
            # Two new prompts, and the default negative prompt encoded once and then reused.
            "embedding misses": total(text, "wan_embedding_cache_misses_total") >= 2,
            "embedding hits": total(text, "wan_embedding_cache_hits_total") >= 1,
            "eta error": total(text, "wan_eta_ratio_count") >= 2,
            # Admission (off in this app: every create is admitted as asked, tier "exact").
            "admissions": total(text, "wan_admissions_total", 'outcome="sync"') >= 2,
            "cached admission": total(text, "wan_admissions_total", 'outcome="cached"') >= 1,
            "load": bool(samples(text, "wan_load")) and all(0 <= v <= 1 for _, v in samples(text, "wan_load")),
            "in flight": bool(samples(text, "wan_jobs_in_flight"))
            and all(v >= 0 for _, v in samples(text, "wan_jobs_in_flight")),
        }

    state = {}

    def exported() -> bool:
        state["checks"] = checks(scrape())
        return all(state["checks"].values())

    # Ray exports on an interval (seconds), so wait for the figures to land.
    try:
        wait_for_condition(exported, timeout=90, retry_interval_ms=1000)
    except RuntimeError:
        pytest.fail(f"metrics missing or wrong: {[k for k, ok in state['checks'].items() if not ok]}")
    text = scrape()
    # The Grafana dashboard filters every query by its Application variable:
    # Ray Serve tags what a replica reports with the application's name.
    # (Other tests of the session deploy apps of their own beside this one: each sample names
    # its application, and this app's jobs are among them.)
    jobs = samples(text, "wan_jobs_total")
    untagged = [labels for labels, _ in jobs if 'application="' not in labels]
    assert not untagged, untagged
    assert any(f'application="{APP_NAME}"' in labels for labels, _ in jobs), jobs
    # GPU memory and utilisation are reported by model replicas on a GPU only.
    assert not samples(text, "wan_gpu_memory_bytes")
