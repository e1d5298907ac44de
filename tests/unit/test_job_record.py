"""A job record holds the settings it runs once: in its video object, read back as `params`."""

from __future__ import annotations

import json

from serve_app.jobs.model import JobRecord, video_settings
from serve_app.settings.speed import FastKnobs
from tests.helpers.jobs import make_job

# A record as stored before the settings were held once: `params` beside the video
# object, the same values in both (video_settings wrote them), a fast tier's knobs as a dict.
EARLIER_LAYOUT = {
    "video": {
        "id": "video_00000000000000000000000000000007",
        "object": "video",
        "status": "queued",
        "model": "wan2.2-ti2v-tiny",
        "progress": 0,
        "queue_position": None,
        "eta_s": None,
        "created_at": 1,
        "completed_at": None,
        "expires_at": None,
        "size": "64x64",
        "seconds": "0.62",
        "error": None,
        "preset": "preview",
        "prompt": "a boat 7",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_frames": 5,
        "fps": 8,
        "num_inference_steps": 1,
        "guidance_scale": 1.0,
        "seed": 7,
        "timings": {"prompt_encode_s": None, "denoise_s": None, "decode_s": None, "encode_s": None, "total_s": None},
        "cached": False,
        "cache_key": None,
        "tier": "minimal",
        "fast": {"step_cache_threshold": 0.3},
        "requested": {"num_inference_steps": 2},
    },
    "params": {
        "prompt": "a boat 7",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "num_frames": 5,
        "num_inference_steps": 1,
        "guidance_scale": 1.0,
        "fps": 8,
        "seed": 7,
        "preset": "preview",
        "fast": {"step_cache_threshold": 0.3},
    },
    "deadline_s": 30.0,
    "created_at": 1.0,
    "owner": "gateway-a",
    "heartbeat_at": 5.0,
    "attempts": 0,
    "cancel_requested": False,
    "delete_requested": False,
    "idempotency_key": None,
    "webhook_url": None,
    "webhook_state": "none",
    "webhook_attempts": 0,
    "artifact_id": None,
    "cache_key": None,
    "oom_retries": 0,
    "key_id": None,
    "error_body": None,
    "error_status": None,
}


def test_the_stored_record_holds_the_settings_once():
    job = make_job(3)
    stored = json.loads(job.model_dump_json())
    assert "params" not in stored
    assert {field: stored["video"][field] for field in video_settings(job.params)} == json.loads(
        json.dumps(video_settings(job.params))
    )
    assert JobRecord.model_validate_json(job.model_dump_json()).params == job.params


def test_params_are_read_from_the_video_and_written_back_to_it():
    job = make_job(3)
    assert job.params.num_frames == job.video.num_frames == 5
    job.params = job.params.model_copy(update={"num_frames": 9, "fast": FastKnobs(fp8=True)})
    # Every settings field of the answer follows, the derived `seconds` too.
    assert (job.video.num_frames, job.video.seconds, job.video.fast) == (9, f"{9 / 8:.2f}", FastKnobs(fp8=True))
    assert job.params.num_frames == 9 and job.params.fast == FastKnobs(fp8=True)


def test_a_record_of_the_earlier_layout_still_loads():
    job = JobRecord.model_validate_json(json.dumps(EARLIER_LAYOUT))
    fast = {"step_cache_threshold": 0.3, "fp8": False, "fp8_attention": False}
    assert job.params.model_dump() == {**EARLIER_LAYOUT["params"], "fast": fast, "input_reference_sha256": None}
    assert job.params.fast == FastKnobs(step_cache_threshold=0.3)
    assert (job.video.tier, job.video.requested, job.owner) == ("minimal", {"num_inference_steps": 2}, "gateway-a")
    # Saved again, it is in the new layout.
    assert "params" not in json.loads(job.model_dump_json())


def test_running_at_a_tier_rewrites_the_answer_and_remembers_the_first_request():
    job = make_job(3)
    job.params = job.params.model_copy(update={"num_frames": 17, "num_inference_steps": 8})
    job.run_at_tier("reduced", job.params.model_copy(update={"num_frames": 13}))
    job.run_at_tier("minimal", job.params.model_copy(update={"num_frames": 9, "num_inference_steps": 4}))
    assert (job.video.tier, job.video.num_frames, job.video.num_inference_steps) == ("minimal", 9, 4)
    assert job.video.requested == {"num_frames": 17, "num_inference_steps": 8}
    assert job.params.num_frames == 9
