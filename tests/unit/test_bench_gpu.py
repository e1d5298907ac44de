"""bench/bench_gpu.py off the card: its command line, and the arithmetic its table is read with.

The sections themselves need the 5B model on a GPU (or minutes of `--smoke`
on a CPU); what is checked here is what a split or a move could break without
a card: every section module imports, the CLI keeps its options, and the DiT's
FLOP count (what its share of the matmul rate is read in) keeps its numbers.
"""

from __future__ import annotations

import subprocess
import sys

from serve_app.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "bench" / "bench_gpu.py"


def test_help_lists_the_options_and_loads_no_torch():
    # --help parses after every section module is imported: a broken import fails here.
    code = (
        "import runpy, sys; sys.argv = [sys.argv[0], '--help']\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=PROJECT_ROOT
    ).stdout
    options = ("--profile", "--data-dir", "--budget-s", "--attention", "--skip", "--smoke", "--fbc", "--fp8")
    for option in (*options, "--image-to-video", "--preview-runs"):
        assert option in out
    # The budget and the section list must be readable before a model (and torch) is loaded.
    assert out.rstrip().endswith("no torch"), out[-300:]


def _config_5b():
    from types import SimpleNamespace

    from serve_app.pipeline.architecture import TRANSFORMER_5B

    return SimpleNamespace(**TRANSFORMER_5B)


def test_dit_flops_gives_the_tflop_recorded_on_the_h100():
    # The committed result, whose shares docs/performance.md quotes: the count
    # must not move with its code, or old and new shares stop comparing.
    import json

    from bench.gpu_speed.dit import dit_flops

    recorded = json.loads((PROJECT_ROOT / "bench/results/gpu-nvidia-h100-80gb-hbm3.json").read_text())
    rows = recorded["dit_forward_compiled"]
    assert set(rows) == {"720p batch 1", "720p batch 2", "preview batch 1", "preview batch 2"}
    for label, row in rows.items():
        batch = int(label.rsplit(" ", 1)[1])
        assert round(dit_flops(_config_5b(), batch, row["tokens"], 512) / 1e12, 1) == row["tflop"], label


def test_dit_flops_agrees_with_the_design_rule_of_thumb():
    # The design notes' model facts: about 8.68 GFLOP per token per forward plus
    # 4*N^2*3072*30 for self-attention; the rest (text cross-attention,
    # embedders) is about 1% at 720p.
    from bench.gpu_speed.dit import dit_flops

    tokens = 31 * 22 * 40  # 1280x704x121: (1 + 120/4) * (704/32) * (1280/32)
    rule = 8.68e9 * tokens + 4 * tokens**2 * 3072 * 30
    assert abs(dit_flops(_config_5b(), 1, tokens, 512) / rule - 1) < 0.02
    assert dit_flops(_config_5b(), 2, tokens, 512) == 2 * dit_flops(_config_5b(), 1, tokens, 512)


def test_image_to_video_selects_its_sections_and_the_text_rows_it_is_read_against():
    from types import SimpleNamespace

    from bench.gpu_speed.harness import section_wanted

    args = SimpleNamespace(skip=["plain"], image_to_video=True)
    assert [n for n in ("build", "plain", "plain_image", "vae", "project_image") if section_wanted(args, n)] == [
        "build",
        "plain_image",
        "project_image",
    ]
    assert section_wanted(SimpleNamespace(skip=[], image_to_video=False), "vae")


def test_run_overlapped_raises_a_parts_error_only_once_the_other_part_is_done():
    import threading

    import pytest

    from bench.gpu_speed.overlap import run_overlapped

    text_done = threading.Event()

    def image_part():
        raise ValueError("corrupt picture")

    def text_part():
        text_done.set()
        return "embeddings"

    with pytest.raises(ValueError, match="corrupt picture"):
        run_overlapped(image_part, text_part)
    assert text_done.is_set()


class _RecordingStages:
    """Stand-ins for the service functions the project's image path calls. The two encodes meet
    at a barrier, so they pass only if both are running at once: one after the other, the first
    waits for the second until the barrier's timeout breaks it and the bench call fails."""

    def __init__(self):
        import contextlib
        import threading

        self.barrier = threading.Barrier(2, timeout=10)
        self.spans: list[tuple[str, float, float]] = []
        self.on_stream = lambda stream: contextlib.nullcontext()
        self.fit_to_size = lambda image, width, height: image

    def _part(self, name, result):
        import time

        started = time.perf_counter()
        self.barrier.wait()  # BrokenBarrierError unless the other encode is under way too
        self.spans.append((name, started, time.perf_counter()))
        return result

    def encode_image(self, pipe, image, height, width):
        return self._part("image", ("image latent", height, width))

    def encode_prompts(self, pipe, prompt, negative_prompt, guidance_scale, max_sequence_length, encode):
        return self._part("text", ("embeddings", prompt))

    def denoise_optimized(self, runtime, params, embeddings, guard, on_step=None, image_latents=None):
        import time

        # The loop starts from both encodes' results, so only after both are done.
        assert embeddings == ("embeddings", params.prompt)
        assert image_latents == ("image latent", params.height, params.width)
        started = time.perf_counter()
        for step in range(params.num_inference_steps):
            if on_step is not None:
                on_step(step + 1, params.num_inference_steps)
        self.spans.append(("denoise", started, time.perf_counter()))
        return "latents"

    def decode_to_mp4(self, pipe, latents, fps, mode):
        import time

        now = time.perf_counter()
        self.spans.append(("decode", now, now))
        return b"mp4"


def test_the_image_rows_time_the_picture_encode_and_the_prompt_encode_side_by_side(monkeypatch):
    # The service's graph (serve_app/graph.py `_run`) runs the video encoder's picture encode beside
    # the prompt encoder; the bench ran it before, charging the project a serial encode. Each timed
    # image run must hold both encodes, overlapping, started and ended inside its clock, and the
    # loop after both.
    import statistics
    import time
    from types import SimpleNamespace

    from bench.gpu_speed import image_to_video
    from bench.gpu_speed.harness import Bench

    stages = _RecordingStages()
    monkeypatch.setattr(image_to_video, "_project_stages", lambda: stages)
    args = SimpleNamespace(profile="tiny", smoke=True, budget_s=1e9, tag="", skip=[], preview_runs=3)
    bench = Bench(args)
    bench.pipe = object()
    bench.profile = SimpleNamespace(max_sequence_length=8)
    bench.runtime = SimpleNamespace(warm_up=lambda *a, **k: None)
    bench.exact_official_step = 0.5
    for setting in ("preview 640x480x17, 20 steps", "official 1280x704x121, 50 steps"):
        bench.add_row(setting, "plain", 2.0, 0.0)
        bench.add_row(setting, "project exact", 1.0, 0.0)
        bench.add_row("image to video: " + setting, "plain", 2.0, 0.0)
    clocks: list[tuple[float, float, float]] = []  # (before, after, the seconds timed reported)
    timed = bench.timed

    def spied_timed(fn):
        before = time.perf_counter()
        out = timed(fn)
        clocks.append((before, time.perf_counter(), out[1]))
        return out

    monkeypatch.setattr(bench, "timed", spied_timed)

    image_to_video.project_image(bench)

    assert len(clocks) == 4  # three preview runs, the official probe
    for before, after, seconds in clocks:
        inside = {name: (s, e) for name, s, e in stages.spans if before <= s and e <= after}
        assert set(inside) == {"image", "text", "denoise", "decode"}, stages.spans
        (image_start, image_end), (text_start, text_end) = inside["image"], inside["text"]
        assert image_start < text_end and text_start < image_end  # side by side
        assert inside["denoise"][0] >= max(image_end, text_end)
        assert seconds >= max(image_end, text_end, inside["decode"][1]) - min(image_start, text_start)
    # The warm-up's two encodes (one per size) ran outside every clock.
    assert sum(1 for name, *_ in stages.spans if name == "image") == 4 + 2

    preview, official = bench.rows[-2:]
    assert preview["setting"].startswith("image to video: preview") and preview["path"] == "project exact"
    assert preview["time_s"] == round(statistics.median(c[2] for c in clocks[:3]), 3)
    assert preview["runs"] == [round(c[2], 3) for c in clocks[:3]]
    for row in (preview, official):
        assert {"image_encode_s", "prompt_encode_s", "encodes_wall_s", "overlap_saved_s", "denoise_s"} <= set(row)
        assert row["encodes_wall_s"] <= row["image_encode_s"] + row["prompt_encode_s"] + 0.001
        assert row["text_ratio"] == 2.0
    assert official["step_vs_text"] is not None
    assert bench.result["image_dynamo_graphs_compiled_while_timed"] == 0
