"""GPU speed: plain `WanPipeline.__call__` vs the project's path, same weights, seed and settings.

    python bench/bench_gpu.py --profile wan2.2-ti2v-5b-random      # on an H100 / H200

One process, one set of random 5B weights (DiT, VAE and UMT5-XXL, bf16):
  plain    diffusers as a user calls it: pipe(prompt, negative_prompt, ...,
           output_type="np"), SDPA attention, no compile;
  project  encode_prompts -> denoise_optimized (regional compile, sync-free
           scheduler, guidance as one batch-2 forward, one timestep per sample,
           the fastest SDPA kernel measured here) -> streaming VAE decode + mp4
           (fused norms). Prompt encoding as the prompt encoder does it: one
           UMT5 pass per text, the presets' negative prompt from its per-text
           cache (encoded once, as every replica does after its first request),
           the prompt encoded every run; UMT5 compiled if that measured faster.
           It ends with an mp4 (the plain run with numpy frames), so it does
           more work, not less.
Settings: preview (640x480x17, 20 steps), 832x480x81 (20 steps), official
(1280x704x121, 50 steps; both paths run 3 steps with a synchronised clock per
step and are extrapolated to 50: total(3) + 47 x median step, printed as such).
Guidance is the preset's (5.0; any value > 1 costs the same).
Sections, in order: the card's bf16 matmul rate (8192^3); plain runs; the
project's set-up (SDPA kernels timed at 720p, the fastest taken; compile and
warm-up); the text encoder eager vs compiled; VAE (bf16 vs fp32 PSNR,
contiguous vs channels-last Conv3d weights, one-shot / streaming / tiled
decode, x264 settings, fused norms; the faster layout and mode stay on, and so
do the fused norms); the project's runs; the DiT's achieved share of the
matmul rate (FLOPs from the architecture); cross-request batching at 1/2/4/8
requests; the fast tier (First-Block-Cache thresholds --fbc, FP8 with --fp8)
with PSNR against the exact path on the same seed, and the chosen one at
official for all 50 steps; whole-forward CUDA graphs at preview; FP8 eager at
720p; the fast path's kernels (cuDNN FP8 self-attention, with --fp8 FP8 linears
too) at every setting, with PSNR against the exact path; image to video
(plain WanImageToVideoPipeline before the set-up, the project's path after its
text rows, its picture encode beside its prompt encode as the service's graph
runs them) at preview and official. --image-to-video runs only those rows and
the text rows they are compared with (no 832x480x81):

    python bench/bench_gpu.py --image-to-video --preview-runs 5 --tag image-to-video
Every section is guarded: a failure is recorded and the rest still runs; the
JSON is rewritten after each section (bench/results/gpu-<card>.json and, when
set, $OUT/gpu-<card>.json), and the table is printed last. --smoke runs the
same code on the tiny model at tiny sizes (CPU), to check the script itself.
Each section is a module of bench/gpu_speed/; harness.py there holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_speed import (
    cuda_graphs,
    dit,
    fast_kernels,
    fast_tier,
    fp8,
    image_to_video,
    matmul,
    plain,
    project,
    project_setup,
    report,
    request_batching,
    text_encoder,
    vae,
)
from bench.gpu_speed.harness import IMAGE_TO_VIDEO_SECTIONS, Bench, section_wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="wan2.2-ti2v-5b-random")
    parser.add_argument("--data-dir", default="data/bench")
    parser.add_argument("--budget-s", type=float, default=480, help="skip remaining sections past this")
    parser.add_argument("--attention", default="auto", help="'auto' (fastest measured SDPA kernel) or a name")
    parser.add_argument("--skip", nargs="*", default=[], help="section names to skip")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: a CPU dry run of this script's code")
    parser.add_argument(
        "--fbc", type=float, nargs="*", default=[0.3, 0.5, 0.8], help="First-Block-Cache thresholds tried at preview"
    )
    parser.add_argument("--fp8", action="store_true", help="also try compiled FP8 in the fast tier (slow compile)")
    parser.add_argument("--tag", default="", help="suffix of the result file: gpu-<card>-<tag>.json")
    parser.add_argument(
        "--image-to-video",
        action="store_true",
        help="only the image-to-video rows and the text rows their ratios are read against, at preview and "
        f"official (sections: {' '.join(IMAGE_TO_VIDEO_SECTIONS)})",
    )
    parser.add_argument(
        "--preview-runs", type=int, default=3, help="timed preview runs per path; the row is their median"
    )
    args = parser.parse_args()
    bench = Bench(args)

    def run(name: str, section, min_left_s: float = 0.0) -> None:
        """One section under the harness's guard (a failure is recorded, the rest still runs)."""
        if section_wanted(args, name):
            bench.section(name, lambda: section(bench), min_left_s)

    run("matmul", matmul.matmul_rate)
    run("build", Bench.build)
    if not bench.result["sections"].get("build", {}).get("ok"):
        report.table(bench)
        return
    run("plain", plain.plain_runs, 60)
    run("plain_image", image_to_video.plain_image, 60)
    run("setup_project", project_setup.setup_project, 60)
    if bench.result["sections"].get("setup_project", {}).get("ok"):
        # The project's sections run on what setup_project built and warmed.
        run("text_encoder", text_encoder.text_encoder, 40)
        run("vae", vae.vae, 40)
        run("project", project.project_runs, 40)
        if bench.result["sections"].get("plain_image", {}).get("ok"):
            run("project_image", image_to_video.project_image, 40)
        run("dit_efficiency", dit.dit_efficiency, 30)
        run("batching", request_batching.batching, 30)
        run("fast_tier", fast_tier.fast_tier, 30)
        if getattr(bench, "fast_official_knobs", None):
            run("fast_official", fast_tier.fast_official, 60)
        run("cuda_graphs", cuda_graphs.cuda_graphs, 15)
        run("fp8_720p", fp8.fp8_720p, 20)
        run("fast_kernels", fast_kernels.fast_kernels, 60)
    report.table(bench)


if __name__ == "__main__":
    main()
