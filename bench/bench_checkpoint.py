"""What denoising checkpoints cost, and that a resumed loop gives the uninterrupted answer (GPU, 5B random).

    python bench/bench_checkpoint.py            # on an H100 / H200

One process, the 5B architecture with random weights, the project's loop
(regional compile), 720p official shape (1280x704x121) for a few steps:
  baseline  the loop without checkpoints;
  project   the same loop saving a checkpoint after every step (the worst
            case; the service saves every `checkpoint_every_s`, 30 s);
then a run killed as step K ends and resumed from its checkpoint, compared with
the uninterrupted latents (relative L2). Prints the per-step time of both, the
cost of one save (bytes, seconds) and what it adds at the default cadence;
writes bench/results/checkpoint-<card>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import card_name, slug, write_result
from serve_app.config import load_model_profile
from serve_app.deadline import Deadline, StepGuard
from serve_app.params import GenerationParams


class _Died(BaseException):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--kill-at", type=int, default=4)
    parser.add_argument("--size", default="1280x704x121", help="WIDTHxHEIGHTxFRAMES")
    args = parser.parse_args()

    import torch

    from serve_app.pipeline.batching import denoise_optimized
    from serve_app.pipeline.checkpoint import LoopCheckpoints
    from serve_app.pipeline.denoiser_runtime import DenoiserRuntime
    from serve_app.pipeline.loading import load_pipeline, set_attention_backend
    from serve_app.pipeline.stages import PromptEmbeddings
    from serve_app.settings.speed import SpeedOptions

    cuda = torch.cuda.is_available()
    profile = load_model_profile(args.profile)
    data = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    pipe = load_pipeline(profile, data, "denoiser")
    if cuda:
        set_attention_backend(pipe.transformer, profile.attention_backend)
    runtime = DenoiserRuntime(pipe, SpeedOptions(compile="default" if cuda else "off", cudnn_benchmark=cuda))
    width, height, frames = (int(x) for x in args.size.split("x"))
    params = GenerationParams(
        prompt="p",
        negative_prompt="",
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=args.steps,
        guidance_scale=5.0,
        fps=24,
        seed=7,
        preset="bench",
    )
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(1, profile.max_sequence_length, pipe.transformer.config.text_dim, generator=gen)
    emb = PromptEmbeddings(text.to(runtime.dtype), torch.randn_like(text).to(runtime.dtype))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run(checkpoints=None, on_step=None):
        sync()
        started = time.perf_counter()
        out = denoise_optimized(
            runtime, params, emb, StepGuard(Deadline.after(3600), args.steps), on_step=on_step, checkpoints=checkpoints
        )
        sync()
        return out, time.perf_counter() - started

    run()  # compile and first-run costs
    whole, base_s = run()
    saves = []

    class Timed(LoopCheckpoints):
        def save(self, job) -> None:
            sync()
            started = time.perf_counter()
            super().save(job)
            saves.append(time.perf_counter() - started)

        def discard(self) -> None:  # kept for the resume below, as a dead replica leaves it
            pass

    ckpt_dir = data / "checkpoints"
    _, every_step_s = run(Timed(ckpt_dir, "video_bench", "r", every_s=0))
    size = (ckpt_dir / "video_bench.pt").stat().st_size

    def die(step, total):
        if step == args.kill_at:
            raise _Died

    (ckpt_dir / "video_bench.pt").unlink()  # a new job: the kill run starts at step 0
    try:
        run(Timed(ckpt_dir, "video_bench", "r", every_s=0), on_step=die)
    except _Died:
        pass
    else:
        raise AssertionError(f"the run meant to die at step {args.kill_at} finished")
    resumed_ckpt = LoopCheckpoints(ckpt_dir, "video_bench", "r", every_s=3600)
    resumed, resumed_s = run(resumed_ckpt)
    rel = float((resumed.float() - whole.float()).norm() / whole.float().norm())

    step_s = base_s / args.steps
    save_s = statistics.median(saves)
    result = {
        "command": "python bench/bench_checkpoint.py " + " ".join(sys.argv[1:]),
        "card": card_name(),
        "profile": args.profile,
        "shape": args.size,
        "steps": args.steps,
        "baseline_loop_s": round(base_s, 3),
        "every_step_checkpoint_loop_s": round(every_step_s, 3),
        "ratio_every_step": round(base_s / every_step_s, 3),
        "save_s_median": round(save_s, 4),
        "checkpoint_bytes": size,
        "overhead_at_30s_cadence": round(save_s / 30.0, 5),
        "resumed_from_step": resumed_ckpt.resumed_from,
        "resumed_loop_s": round(resumed_s, 3),
        "resumed_vs_uninterrupted_rel_l2": rel,
    }
    path = write_result(f"checkpoint-{slug(card_name())}", result)
    print(f"\n{card_name()}, {args.profile}, {args.size}, {args.steps} steps")
    print("| loop | s | per step s | ratio vs baseline |")
    print("| --- | --- | --- | --- |")
    print(f"| baseline, no checkpoints | {base_s:.2f} | {step_s:.3f} | 1.00 |")
    print(
        f"| project, a checkpoint after every step | {every_step_s:.2f} | {every_step_s / args.steps:.3f} | "
        f"{base_s / every_step_s:.3f} |"
    )
    print(f"one save: {size / 2**20:.0f} MiB in {save_s:.3f} s; at one per 30 s: {100 * save_s / 30:.2f}% of loop time")
    print(
        f"killed as step {args.kill_at} ended (before its save), resumed at step {resumed_ckpt.resumed_from}: "
        f"{resumed_s:.2f} s for the rest; relative L2 vs uninterrupted {rel:.2e}; wrote {path}"
    )


if __name__ == "__main__":
    main()
