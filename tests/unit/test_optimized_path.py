"""The optimised path gives plain diffusers' answer (tiny model, CPU, float32).

Tolerances, on latents of unit scale after the full loop:
- EXACT_ATOL 1e-4: the project's loop vs `WanPipeline.__call__`. It differs
  only in rounding: guidance as one batch-2 forward, one timestep per sample
  instead of per token (a different GEMM row count in the time embedder), and
  UniPC's scalars on the execution device. Measured max difference ~1e-6.
- COMPILE_ATOL 1e-3: the same with the blocks compiled by inductor, which
  fuses and reorders float32 arithmetic. Measured ~1e-5.
- BATCH_ATOL 1e-4: requests stacked along the batch axis vs each alone.
Frames from the streaming decoder must equal the one-shot decode exactly
(same ops per latent frame), and so must the mp4 files (one x264 thread: threaded
x264 is not reproducible).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serve_app.deadline import Deadline, StepGuard
from serve_app.params import GenerationParams
from serve_app.pipeline import stages
from serve_app.pipeline.batching import denoise_optimized
from serve_app.pipeline.checkpoint import LoopCheckpoints, sweep
from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
from serve_app.pipeline.loading import load_pipeline
from serve_app.pipeline.step_batcher import StepBatcher
from serve_app.settings.speed import FastKnobs, SpeedOptions
from serve_app.video import REPRODUCIBLE_CODEC_OPTIONS, decode_mp4, frames_to_uint8
from tests.helpers.params import tiny_job

EXACT_ATOL = 1e-4
COMPILE_ATOL = 1e-3
BATCH_ATOL = 1e-4


@pytest.fixture(scope="module")
def pipes(tiny_profile, data_dir):
    return {s: load_pipeline(tiny_profile, data_dir, s) for s in ("prompt_encoder", "denoiser", "video_encoder")}


def _params(**overrides) -> GenerationParams:
    return tiny_job(**{"num_inference_steps": 5, **overrides})


def _embeddings(pipes, params, profile):
    return stages.encode_prompts(
        pipes["prompt_encoder"],
        params.prompt,
        params.negative_prompt,
        params.guidance_scale,
        profile.max_sequence_length,
    )


def _guard(params):
    return StepGuard(Deadline.after(600), params.num_inference_steps)


def _plain(pipes, params, emb, profile):
    return stages.denoise(
        pipes["denoiser"], params, emb, _guard(params), max_sequence_length=profile.max_sequence_length
    ).numpy()


@pytest.mark.parametrize("cfg_batch", [True, False], ids=["cfg-batch", "two-passes"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"guidance_scale": 1.0, "negative_prompt": ""}, {"num_frames": 13, "width": 64, "seed": 7}],
    ids=["guidance", "no-guidance", "13-frames"],
)
def test_optimized_loop_equals_plain_wan_pipeline(pipes, tiny_profile, cfg_batch, overrides):
    params = _params(**overrides)
    emb = _embeddings(pipes, params, tiny_profile)
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions(cfg_batch=cfg_batch))
    steps = []
    ours = denoise_optimized(runtime, params, emb, _guard(params), on_step=lambda s, t: steps.append((s, t))).numpy()
    plain = _plain(pipes, params, emb, tiny_profile)
    assert steps == [(i, params.num_inference_steps) for i in range(1, params.num_inference_steps + 1)]
    assert ours.shape == plain.shape
    np.testing.assert_allclose(ours, plain, rtol=0, atol=EXACT_ATOL)
    assert np.abs(plain).max() > 0.1  # a real signal, not two zero tensors


def test_optimized_loop_stops_at_the_guard(pipes, tiny_profile):
    from serve_app.errors import RequestCancelled

    params = _params()
    guard = _guard(params)

    def cancel_after_two(step, total):
        if step == 2:
            guard.cancel()

    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    with pytest.raises(RequestCancelled):
        denoise_optimized(runtime, params, _embeddings(pipes, params, tiny_profile), guard, on_step=cancel_after_two)
    assert guard.steps_done == 2


class _ReplicaDied(BaseException):
    """Stands in for the process going away mid-loop."""


class _DeadReplicaCheckpoints(LoopCheckpoints):
    """Checkpoints as a replica that dies leaves them: saved, never cleaned up."""

    def discard(self) -> None:
        pass


def _killed_run(pipes, tiny_profile, steps: int, die_at: int, checkpoints):
    """(runtime, params, embeddings, the uninterrupted latents) after a run that died at step `die_at`."""
    params = _params(num_inference_steps=steps)
    emb = _embeddings(pipes, params, tiny_profile)
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    whole = denoise_optimized(runtime, params, emb, _guard(params)).numpy()

    def die(step, total):
        if step == die_at:
            raise _ReplicaDied

    with pytest.raises(_ReplicaDied):
        denoise_optimized(runtime, params, emb, _guard(params), on_step=die, checkpoints=checkpoints)
    return runtime, params, emb, whole


def test_a_loop_resumed_from_its_checkpoint_gives_the_uninterrupted_latents(pipes, tiny_profile, tmp_path):
    first = _DeadReplicaCheckpoints(tmp_path, "video_job1", "request-a", every_s=0)
    runtime, params, emb, whole = _killed_run(pipes, tiny_profile, steps=6, die_at=4, checkpoints=first)
    assert first.saved == 3 and (tmp_path / "video_job1.pt").is_file()  # after steps 1, 2 and 3

    steps = []
    again = LoopCheckpoints(tmp_path, "video_job1", "request-a", every_s=3600)
    resumed = denoise_optimized(
        runtime, params, emb, _guard(params), on_step=lambda s, t: steps.append(s), checkpoints=again
    ).numpy()
    assert again.resumed_from == 3 and steps == [3, 4, 5, 6]  # progress picks up at the saved step
    np.testing.assert_array_equal(resumed, whole)  # the same math, in the same order: bit for bit
    assert not (tmp_path / "video_job1.pt").exists()  # a finished loop leaves no checkpoint


def test_a_checkpoint_of_other_settings_or_a_torn_file_is_ignored(pipes, tiny_profile, tmp_path):
    runtime, params, emb, whole = _killed_run(
        pipes,
        tiny_profile,
        steps=4,
        die_at=3,
        checkpoints=_DeadReplicaCheckpoints(tmp_path, "video_job2", "request-a", every_s=0),
    )
    assert (tmp_path / "video_job2.pt").is_file()
    # A rerun with other settings (the lower tier after an OOM, say) starts over.
    other = LoopCheckpoints(tmp_path, "video_job2", "request-b", every_s=3600)
    np.testing.assert_array_equal(
        denoise_optimized(runtime, params, emb, _guard(params), checkpoints=other).numpy(), whole
    )
    assert other.resumed_from == 0
    (tmp_path / "video_job3.pt").write_bytes(b"half a checkpoint")
    torn = LoopCheckpoints(tmp_path, "video_job3", "request-a", every_s=3600)
    np.testing.assert_array_equal(
        denoise_optimized(runtime, params, emb, _guard(params), checkpoints=torn).numpy(), whole
    )
    assert torn.resumed_from == 0


def test_stale_checkpoints_are_swept(tmp_path):
    import os
    import time

    old, fresh = tmp_path / "video_old.pt", tmp_path / "video_fresh.pt"
    for path in (old, fresh):
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert sweep(tmp_path, older_than_s=3600) == 1
    assert fresh.exists() and not old.exists()
    assert sweep(tmp_path / "missing", 1) == 0
    with pytest.raises(ValueError):
        LoopCheckpoints(tmp_path, "../escape", "r", every_s=1)


def test_compiled_blocks_equal_eager_and_share_one_graph(pipes, tiny_profile, data_dir):
    import torch
    from torch._dynamo.utils import counters

    from serve_app.pipeline.optimize import attention_in_effect, uncompile_blocks

    pipe = load_pipeline(tiny_profile, data_dir, "denoiser")  # its own copy: compile patches the blocks
    # A pinned-kernel backend, as GPU profiles have (sdpa-cudnn is `_native_cudnn`);
    # MATH is the one of them a CPU runs.
    pipe.transformer.set_attention_backend("_native_math")
    torch._dynamo.reset()
    counters.clear()
    runtime = DenoiserRuntime(pipe, SpeedOptions(compile="default", compile_dynamic=True))
    try:
        for overrides in ({}, {"num_frames": 13, "width": 64, "seed": 7}):  # two shapes, batch 2 (guidance)
            params = _params(**overrides)
            emb = _embeddings(pipes, params, tiny_profile)
            ours = denoise_optimized(runtime, params, emb, _guard(params)).numpy()
            np.testing.assert_allclose(ours, _plain(pipes, params, emb, tiny_profile), rtol=0, atol=COMPILE_ATOL)
        # Every block and both shapes ran one compiled graph: no recompiles per block or size.
        assert counters["stats"]["unique_graphs"] == 1
        # ... and that graph is one AOTAutograd's cache keeps, so a restart skips AOTAutograd.
        assert counters["aot_autograd"]["autograd_cache_bypass"] == 0
        assert counters["aot_autograd"]["autograd_cache_miss"] + counters["aot_autograd"]["autograd_cache_hit"] >= 1
        assert runtime.describe()["attention_backend"] == "_native_math"
    finally:
        uncompile_blocks(pipe.transformer)
        torch._dynamo.reset()
    assert attention_in_effect(pipe.transformer) == "_native_math"  # back in the processors


def test_batched_requests_equal_each_alone_and_a_request_joins_mid_loop(pipes, tiny_profile):
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    batcher = StepBatcher(runtime, max_requests=4, max_tokens=10_000)
    cases = [
        _params(seed=1),
        _params(seed=2, prompt="a lighthouse at night", guidance_scale=3.0),
        _params(seed=3, guidance_scale=1.0, negative_prompt=""),  # unguided: one row, not two
        _params(seed=4, num_inference_steps=3),  # joins later, finishes with the others
    ]
    embs = [_embeddings(pipes, p, tiny_profile) for p in cases]
    alone = [denoise_optimized(runtime, p, e, _guard(p)).numpy() for p, e in zip(cases, embs)]

    loops: list[threading.Thread] = []
    futures = {}

    def start_loop(run):
        thread = threading.Thread(target=run)
        loops.append(thread)
        thread.start()

    def join_late(step, total):
        # Called on the loop thread after the first job's step 2: the last
        # request joins at that step boundary, behind three running ones.
        if step == 2 and 3 not in futures:
            futures[3] = batcher.submit(cases[3], embs[3], _guard(cases[3]), None, FastKnobs(), start_loop)

    gate = threading.Event()
    futures[0] = batcher.submit(
        cases[0],
        embs[0],
        _guard(cases[0]),
        join_late,
        FastKnobs(),
        lambda run: start_loop(lambda: (gate.wait(), run())),
    )
    futures[1] = batcher.submit(cases[1], embs[1], _guard(cases[1]), None, FastKnobs(), start_loop)
    futures[2] = batcher.submit(cases[2], embs[2], _guard(cases[2]), None, FastKnobs(), start_loop)
    gate.set()  # the first three were queued before the loop's first step
    first = futures[0].result(timeout=120)  # the late request was submitted long before this
    results = {i: f.result(timeout=120).numpy() for i, f in sorted(futures.items())}
    assert sorted(results) == [0, 1, 2, 3] and np.array_equal(results[0], first.numpy())
    for thread in loops:
        thread.join(timeout=10)
    assert len(loops) == 1  # one loop served everyone
    assert batcher.max_batch_seen == 4
    # 5 steps for the longest request; the late one added none of its own.
    assert batcher.forwards == 5
    for i in range(4):
        np.testing.assert_allclose(results[i], alone[i], rtol=0, atol=BATCH_ATOL, err_msg=f"request {i}")
    assert np.abs(results[0] - results[1]).max() > 1e-2  # different requests, different answers


def test_step_cache_knob_changes_the_answer_and_is_removed_after(pipes, tiny_profile):
    params = _params(num_inference_steps=8)
    emb = _embeddings(pipes, params, tiny_profile)
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    exact = denoise_optimized(runtime, params, emb, _guard(params)).numpy()
    # threshold 1.0: every step after the first reuses the cached residual.
    cached = denoise_optimized(runtime, params, emb, _guard(params), knobs=FastKnobs(step_cache_threshold=1.0)).numpy()
    assert np.abs(cached - exact).max() > 1e-3
    assert not pipes["denoiser"].transformer.is_cache_enabled
    again = denoise_optimized(runtime, params, emb, _guard(params)).numpy()
    np.testing.assert_array_equal(again, exact)


def test_fp8_without_a_copy_is_a_clear_error(pipes, tiny_profile):
    params = _params()
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    with pytest.raises(RuntimeError, match=r"holds no such DiT \(speed.fp8_weights=False"):
        denoise_optimized(
            runtime, params, _embeddings(pipes, params, tiny_profile), _guard(params), knobs=FastKnobs(fp8=True)
        )


@pytest.fixture(scope="module")
def latents(pipes, tiny_profile):
    params = _params(num_frames=13)
    emb = _embeddings(pipes, params, tiny_profile)
    return _plain(pipes, params, emb, tiny_profile)


def test_streaming_decode_gives_the_one_shot_frames_exactly(pipes, latents):
    import torch

    oneshot = frames_to_uint8(stages.decode_latents(pipes["video_encoder"], latents))
    chunks = [c.numpy() for c in stages.iter_decoded_frames(pipes["video_encoder"], torch.as_tensor(latents))]
    assert [len(c) for c in chunks] == [1, 4, 4, 4]  # the causal VAE: 1 frame, then 4 per latent frame
    np.testing.assert_array_equal(np.concatenate(chunks), oneshot)


@pytest.fixture
def one_torch_thread():
    """Bit-exact comparisons of two decodes: with one intra-op thread the CPU convolutions'
    reduction order cannot change between runs (a rounding flip in one pixel once
    changed the mp4 bytes in CI, with the encode thread running beside the decode)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["streaming", "tiled"])
def test_decode_to_mp4_equals_one_shot_encode(pipes, latents, mode, one_torch_thread):
    from serve_app.video import encode_mp4, make_thumbnail

    frames = frames_to_uint8(stages.decode_latents(pipes["video_encoder"], latents))
    # One x264 thread: threaded x264 gives different files for the same frames (video.py).
    ours = stages.decode_to_mp4(
        pipes["video_encoder"], latents, fps=8, mode=mode, codec_options=REPRODUCIBLE_CODEC_OPTIONS
    )
    assert ours.mode == mode
    assert (ours.num_frames, ours.height, ours.width) == frames.shape[:3]
    oneshot = encode_mp4(frames, 8, REPRODUCIBLE_CODEC_OPTIONS)
    assert ours.mp4 == oneshot
    np.testing.assert_array_equal(decode_mp4(ours.mp4), decode_mp4(oneshot))
    assert ours.thumbnail == make_thumbnail(frames)
    assert not pipes["video_encoder"].vae.use_tiling  # tiling switched back off


def test_fused_vae_norms_decode_like_diffusers(tiny_profile, data_dir, latents):
    """Inductor-compiled norms (SiLU folded in) on a VAE of its own: same frames within float32 rounding."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock, WanRMS_norm

    from serve_app.pipeline.optimize import fuse_vae_norms

    pipe = load_pipeline(tiny_profile, data_dir, "video_encoder")
    eager = stages.decode_latents(pipe, latents)
    norms = [m for m in pipe.vae.decoder.modules() if isinstance(m, WanRMS_norm)]
    blocks = [m for m in pipe.vae.decoder.modules() if isinstance(m, WanResidualBlock)]
    try:
        assert fuse_vae_norms(pipe.vae) == len(norms) > 2 * len(blocks) > 0
        assert all(isinstance(b.nonlinearity, torch.nn.Identity) for b in blocks)
        fused = stages.decode_latents(pipe, latents)
    finally:
        torch._dynamo.reset()
    assert fused.shape == eager.shape
    np.testing.assert_allclose(fused, eager, rtol=0, atol=COMPILE_ATOL)
    assert np.abs(eager - eager.mean()).max() > 0.05  # real frames, not a flat grey


def test_compiled_text_encoder_equals_eager(tiny_profile, data_dir):
    import torch

    from serve_app.pipeline.optimize import compile_text_encoder

    pipe = load_pipeline(tiny_profile, data_dir, "prompt_encoder")
    eager = stages.encode_prompts(pipe, "a red fox", "blurry", 5.0, tiny_profile.max_sequence_length)
    try:
        assert compile_text_encoder(pipe.text_encoder) == pipe.text_encoder.config.num_layers
        compiled = stages.encode_prompts(pipe, "a red fox", "blurry", 5.0, tiny_profile.max_sequence_length)
    finally:
        torch._dynamo.reset()
    for ours, theirs in (
        (compiled.prompt_embeds, eager.prompt_embeds),
        (compiled.negative_prompt_embeds, eager.negative_prompt_embeds),
    ):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=COMPILE_ATOL)
    assert eager.prompt_embeds.abs().max() > 0.1


def test_previews_see_the_jobs_x0_estimate_every_step(pipes, tiny_profile):
    params = _params()
    seen = []

    def on_latents(step, total, estimate):
        x0 = estimate()
        seen.append((step, total, tuple(x0.shape)))

    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    latents = denoise_optimized(
        runtime, params, _embeddings(pipes, params, tiny_profile), _guard(params), on_latents=on_latents
    )
    assert [s for s, _, _ in seen] == list(range(1, params.num_inference_steps + 1))
    assert all(shape == tuple(latents.shape) for _, _, shape in seen)


def test_runtime_warm_up_runs_each_bucket_guided_and_unguided(pipes):
    runtime = DenoiserRuntime(pipes["denoiser"], SpeedOptions())
    runtime.warm_up([(64, 96, 9), (64, 64, 5)], text_len=512, steps=1)
    assert sorted(runtime.warmup_s) == ["64x64x5", "96x64x9"]
    assert runtime.describe()["attention_backend"] == "native"
