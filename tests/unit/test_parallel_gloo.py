"""The multi-GPU loop on CPUs: ranks as processes over gloo, the tiny model, float32.

The same code the GPU replica runs (RankWorker -> denoise_parallel ->
diffusers' context parallel), so CI covers the sharding, the guidance halves'
swap, the broadcast start, the per-step stop agreement and checkpoint resume.
Each rank's answer is held to the single-process loop (`denoise_optimized`):

- CFG-parallel only changes which process runs each guidance pass: equal to
  the single-process loop's two batch-1 passes up to float32 rounding of a
  different GEMM batch size (measured ~1e-7 relative);
- Ulysses splits tokens and trades them for heads inside attention; per-head
  attention is unchanged, so the same bound holds (measured ~1e-7), for a token
  count the ranks divide and one they do not (the any-length copy).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from serve_app.deadline import Deadline, StepGuard
from serve_app.errors import RequestCancelled
from serve_app.pipeline import stages
from serve_app.pipeline.batching import denoise_optimized, start_job, step_jobs
from serve_app.pipeline.checkpoint import LoopCheckpoints, fingerprint
from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
from serve_app.pipeline.loading import load_pipeline
from serve_app.pipeline.parallel.layout import ParallelLayout
from serve_app.settings.speed import EXACT
from tests.helpers.params import tiny_job

REL_L2 = 1e-5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank, world, port, cfg_parallel, args, requests, results):
    """One rank: the RankWorker the replica's actor would hold, running every request in turn.
    A request's `cancel_on_rank` ("die", r) makes rank r's process exit after step 2 instead."""
    from serve_app.pipeline.parallel.rank import RankWorker

    worker = RankWorker(args, rank, world, "127.0.0.1", port, timeout_s=120, cfg_parallel=cfg_parallel)
    try:
        out = {"layout": worker.group.layout.describe()}
        for name, params, embeddings, job_id, cancel_on_rank in requests:
            if cancel_on_rank == ("die", rank):

                def on_step(step, total, record=worker._on_step):
                    record(step, total)
                    if step == 2:
                        os._exit(3)  # the rank actor killed, the card lost

                worker._on_step = on_step  # type: ignore[method-assign]
            if cancel_on_rank == rank:
                # This rank alone sees a cancel after step 2: all ranks must stop together.
                def on_step(step, total, record=worker._on_step, worker=worker):
                    record(step, total)
                    if step == 2:
                        worker.cancel()

                worker._on_step = on_step  # type: ignore[method-assign]
            try:
                answer = worker.denoise(params, embeddings, Deadline.after(600), job_id=job_id)
                # numpy, not a tensor: torch queues share tensors by file descriptor, gone once the rank exits.
                out[name] = None if answer is None else answer.latents
            except RequestCancelled as exc:
                out[name] = ("cancelled", worker.progress()["step"], str(exc))
            except RuntimeError as exc:  # a collective with a dead peer
                out[name] = ("failed", worker.progress()["step"], str(exc)[:200])
        results.put((rank, out))
    finally:
        worker.close()


def _run_ranks(world, cfg_parallel, args, requests, dead=()):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, world, port, cfg_parallel, args, requests, results))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=300) for r in range(world) if r not in dead)
    for rank, p in enumerate(procs):
        p.join(timeout=60)
        assert p.exitcode == (3 if rank in dead else 0)
    return out


@pytest.fixture(scope="module")
def setup(tiny_profile, data_dir):
    encoder = load_pipeline(tiny_profile, data_dir, "prompt_encoder")
    denoiser = load_pipeline(tiny_profile, data_dir, "denoiser")
    runtime = DenoiserRuntime(denoiser, tiny_profile.speed)
    return tiny_profile, encoder, runtime, {"model": "tiny", "data_dir": str(data_dir)}


def _embeddings(encoder, params, profile):
    return stages.encode_prompts(
        encoder, params.prompt, params.negative_prompt, params.guidance_scale, profile.max_sequence_length
    )


def _reference(runtime, params, embeddings):
    return denoise_optimized(runtime, params, embeddings, StepGuard(Deadline.after(600), params.num_inference_steps))


def _rel_l2(a, b) -> float:
    a = torch.as_tensor(a)
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_layout_numbers_ranks_half_by_half():
    layout = ParallelLayout.plan(8, heads=24)
    assert (layout.cfg_degree, layout.ulysses_degree) == (2, 4)
    assert [layout.cfg_rank(r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [layout.ulysses_rank(r) for r in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert ParallelLayout.plan(3, heads=24).cfg_degree == 1  # odd: no guidance halves
    with pytest.raises(ValueError, match="does not divide the DiT's 24 attention heads"):
        ParallelLayout.plan(10, heads=24)  # 5 ranks a half


def test_cfg_halves_match_one_process_and_stop_together(setup, tmp_path):
    profile, encoder, runtime, args = setup
    guided = tiny_job()
    unguided = tiny_job(guidance_scale=1.0, seed=7)
    emb_guided = _embeddings(encoder, guided, profile)
    emb_unguided = _embeddings(encoder, unguided, profile)
    requests = [
        ("guided", guided, emb_guided, None, None),
        ("unguided", unguided, emb_unguided, None, None),
        ("cancelled", guided, emb_guided, None, 1),
    ]
    out = _run_ranks(2, True, args, requests)
    assert out[0]["layout"] == {"world": 2, "cfg_degree": 2, "ulysses_degree": 1}
    assert _rel_l2(out[0]["guided"], _reference(runtime, guided, emb_guided)) < REL_L2
    assert _rel_l2(out[0]["unguided"], _reference(runtime, unguided, emb_unguided)) < REL_L2
    assert out[1]["guided"] is None  # only rank 0 answers
    # Rank 1 alone was cancelled after step 2; both ranks left after that same step.
    assert out[1]["cancelled"][:2] == ("cancelled", 2)
    assert out[0]["cancelled"][:2] == ("cancelled", 2)
    assert "other ranks" in out[0]["cancelled"][2]


def test_sequence_split_matches_one_process_for_even_and_uneven_token_counts(setup):
    profile, encoder, runtime, args = setup
    even = tiny_job()  # 3 latent frames x 2 x 3 patches = 18 tokens: 9 per rank
    uneven = tiny_job(width=96, height=96, seed=5)  # 3 x 3 x 3 = 27 tokens: 14 + 13
    emb_even = _embeddings(encoder, even, profile)
    emb_uneven = _embeddings(encoder, uneven, profile)
    out = _run_ranks(2, False, args, [("even", even, emb_even, None, None), ("uneven", uneven, emb_uneven, None, None)])
    assert out[0]["layout"] == {"world": 2, "cfg_degree": 1, "ulysses_degree": 2}
    assert _rel_l2(out[0]["even"], _reference(runtime, even, emb_even)) < REL_L2
    assert _rel_l2(out[0]["uneven"], _reference(runtime, uneven, emb_uneven)) < REL_L2


def test_ranks_resume_from_the_checkpoint_a_lost_replica_left(setup, data_dir):
    profile, encoder, runtime, _ = setup
    params = tiny_job(num_inference_steps=5, seed=11)
    embeddings = _embeddings(encoder, params, profile)
    # What a replica that died after step 3 left behind: the single-GPU loop's state at step 3.
    request = fingerprint(profile.identity, params.model_dump_json(), EXACT.model_dump_json())
    folder = data_dir / "checkpoints-parallel-test"
    job = start_job(runtime.pipe, params, embeddings, StepGuard(Deadline.after(600), 5), dtype=runtime.dtype)
    with torch.inference_mode():
        for _ in range(3):
            step_jobs(runtime.transformer, [job], runtime=runtime)
    LoopCheckpoints(folder, "job_resume", request, every_s=3600).save(job)
    args = {"model": "tiny", "data_dir": str(data_dir), "checkpoint_dir": str(folder), "checkpoint_every_s": 3600}
    out = _run_ranks(2, True, args, [("resumed", params, embeddings, "job_resume", None)])
    assert _rel_l2(out[0]["resumed"], _reference(runtime, params, embeddings)) < REL_L2
    assert not (folder / "job_resume.pt").exists()  # finished: nobody resumes it again


def test_a_rank_that_dies_leaves_rank_0s_checkpoint_for_the_rerun(setup, data_dir):
    """Rank 0 outlives a dead peer (its next collective fails at once on gloo): the file it
    saved must stay for the replacement replica, unlike a run stopped on purpose."""
    profile, encoder, _, _ = setup
    params = tiny_job(num_inference_steps=5, seed=13)
    embeddings = _embeddings(encoder, params, profile)
    folder = data_dir / "checkpoints-dead-rank"
    # Saved after every step (the cadence is seconds of loop time; the tiny model's steps are ms).
    args = {"model": "tiny", "data_dir": str(data_dir), "checkpoint_dir": str(folder), "checkpoint_every_s": 1e-6}
    out = _run_ranks(2, True, args, [("lost", params, embeddings, "job_lost", ("die", 1))], dead=(1,))
    assert out[0]["lost"][0] == "failed"
    saved = torch.load(folder / "job_lost.pt", weights_only=True)
    assert saved["step"] == 2  # the last step both ranks finished
