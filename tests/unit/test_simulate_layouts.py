"""bench/simulate_layouts.py and bench/layout_times.py: cases small enough to check by hand."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.layout_times import (
    KINDS,
    Measurements,
    ServiceTimes,
    SpeedupModel,
)
from bench.simulate_layouts import (
    Arrival,
    Layout,
    default_layouts,
    main,
    parse_mix,
    percentile,
    poisson_arrivals,
    simulate,
    summarize,
)
from serve_app.params import GenerationParams
from serve_app.paths import PROJECT_ROOT

PREVIEW, STANDARD, OFFICIAL = KINDS["preview"], KINDS["standard"], KINDS["official"]
# The built-in model: 4 GPUs do the work of 4 at 0.93 per doubling.
FOUR_GPU_SPEEDUP = 4 * 0.93**2


@pytest.fixture
def times() -> ServiceTimes:
    return ServiceTimes(Measurements.builtin())


def at(time: float, kind, index: int, deadline_s: float = 1000.0) -> Arrival:
    return Arrival(index, time, kind, time + deadline_s)


# --- service times ---------------------------------------------------------------------------


def test_builtin_times_are_the_reference_numbers_and_say_so(times):
    assert times.seconds(OFFICIAL, 1) == 97.6
    assert times.seconds(PREVIEW, 1) == 1.58
    assert times.lookup(OFFICIAL, 1).source == "built-in"
    assert "built-in" in Measurements.builtin().source


def test_other_step_counts_pay_decode_once(times):
    # 832x480x81 is 8.73 s at 20 steps with 1.50 s of decode; the standard preset runs 30.
    assert times.seconds(STANDARD, 1) == pytest.approx(1.50 + 7.23 * 30 / 20)
    assert "rescaled" in times.lookup(STANDARD, 1).source


def test_unmeasured_degrees_follow_the_stated_model(times):
    assert times.seconds(OFFICIAL, 4) == pytest.approx(97.6 / FOUR_GPU_SPEEDUP)
    assert times.seconds(OFFICIAL, 2) == pytest.approx(97.6 / (2 * 0.93))
    # 1,500 tokens: too few for Ulysses at 2,048 per rank, so 4 GPUs do what CFG-parallel on 2 does.
    assert times.seconds(PREVIEW, 4) == pytest.approx(1.58 / (2 * 0.93))
    assert "model" in times.lookup(OFFICIAL, 4).source


def test_speedup_model_by_hand():
    model = SpeedupModel(doubling_efficiency=0.9, min_tokens_per_rank=1000)
    assert model.speedup(1, 50_000) == 1
    assert model.speedup(8, 50_000) == pytest.approx(8 * 0.9**3)
    assert model.effective_gpus(8, 1500) == 2  # one Ulysses rank's worth of tokens: CFG halves only
    assert model.effective_gpus(8, 3000) == 6
    assert model.fit_efficiency(4, 50_000, 4 * 0.8**2) == pytest.approx(0.8)


def write_measurements(tmp_path, rows, card="NVIDIA H100 80GB HBM3"):
    path = tmp_path / "parallel-test.json"
    path.write_text(json.dumps({"card": card, "rows": rows}))
    return path


def test_measured_rows_win_and_plain_rows_are_ignored(tmp_path):
    path = write_measurements(
        tmp_path,
        [
            {"gpus": 1, "setting": "official 1280x704x121, 50 steps", "path": "plain", "time_s": 140.0},
            {"gpus": 1, "setting": "official 1280x704x121, 50 steps", "path": "project exact", "time_s": 100.0},
            {"gpus": 4, "setting": "official 1280x704x121, 50 steps", "time_s": 25.0, "speedup_vs_1gpu": 4.0},
            {"gpus": 2, "width": 832, "height": 480, "num_frames": 81, "steps": 20, "time_s": 5.0},
            {"gpus": 1, "setting": "832x480x81, 20 steps", "time_s": 10.0, "decode_s": 2.0},
            {"gpus": 2, "setting": "no shape here", "time_s": 1.0},
        ],
    )
    measurements = Measurements.from_file(path)
    assert "measured" in measurements.source and str(path) in measurements.source
    assert "NVIDIA H100 80GB HBM3" in measurements.source
    assert len(measurements.ignored) == 2  # the plain baseline and the row without a shape
    times = ServiceTimes(measurements)
    assert times.seconds(OFFICIAL, 1) == 100.0
    assert times.seconds(OFFICIAL, 4) == 25.0
    assert times.lookup(OFFICIAL, 4).source == "measured"
    # 8 GPUs unmeasured: the 4-GPU row showed linear speedup (e = 1), so 8 GPUs give 8x.
    assert times.seconds(OFFICIAL, 8) == pytest.approx(100.0 / 8)
    assert "fitted to the measured 4-GPU 4.00x" in times.lookup(OFFICIAL, 8).source
    # 832x480x81 measured at 20 steps with 2 s of decode; the standard preset runs 30.
    assert times.seconds(STANDARD, 1) == pytest.approx(2.0 + 8.0 * 30 / 20)
    assert times.seconds(STANDARD, 2) == pytest.approx(5.0 * (0.2 + 0.8 * 30 / 20))
    # No preview rows: the built-in 1-GPU number, labelled so.
    assert times.seconds(PREVIEW, 1) == 1.58
    assert times.lookup(PREVIEW, 1).source == "built-in"


def test_repeated_rows_count_by_their_median(tmp_path):
    row = {"gpus": 2, "setting": "official 1280x704x121, 50 steps"}
    path = write_measurements(tmp_path, [{**row, "time_s": t} for t in (50.0, 52.0, 70.0)])
    assert ServiceTimes(Measurements.from_file(path)).seconds(OFFICIAL, 2) == 52.0


# --- the simulation, by hand -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["1+1+1+1", "4", "2+1+1"])
@pytest.mark.parametrize("kind", [PREVIEW, STANDARD, OFFICIAL])
def test_one_request_on_an_idle_node_takes_its_service_time(times, spec, kind):
    layout = Layout.parse(spec)
    [outcome] = simulate(layout, [at(5.0, kind, 0)], times)
    degree = layout.degrees[outcome.replica]
    assert outcome.latency == pytest.approx(times.seconds(kind, degree))
    assert outcome.in_time


def test_two_simultaneous_720p_requests(times):
    pair = [at(0.0, OFFICIAL, 0), at(0.0, OFFICIAL, 1)]
    parallel = simulate(Layout.parse("4"), pair, times)
    assert [o.finish for o in parallel] == pytest.approx([97.6 / FOUR_GPU_SPEEDUP, 2 * 97.6 / FOUR_GPU_SPEEDUP])
    independent = simulate(Layout.parse("1+1+1+1"), pair, times)
    assert [o.finish for o in independent] == pytest.approx([97.6, 97.6])
    assert [o.replica for o in independent] == [0, 1]


def test_mixed_layout_routes_by_latent_tokens(times):
    layout = Layout.parse("2+1+1", threshold_tokens=16384)
    assert STANDARD.latent_tokens < 16384 <= OFFICIAL.latent_tokens
    outcomes = simulate(layout, [at(0.0, OFFICIAL, 0), at(0.0, PREVIEW, 1), at(0.0, STANDARD, 2)], times)
    assert [o.replica for o in outcomes] == [0, 1, 2]
    # A second 720p queues behind the first on the 2-GPU replica, though two single GPUs are free.
    outcomes = simulate(layout, [at(0.0, OFFICIAL, 0), at(0.0, OFFICIAL, 1)], times)
    assert [o.replica for o in outcomes] == [0, 0]
    assert outcomes[1].finish == pytest.approx(2 * 97.6 / (2 * 0.93))


def test_shortest_queue_then_fifo(times):
    outcomes = simulate(Layout.parse("1+1"), [at(0.0, PREVIEW, i) for i in range(3)], times)
    assert [o.replica for o in outcomes] == [0, 1, 0]
    assert [o.latency for o in outcomes] == pytest.approx([1.58, 1.58, 3.16])


def test_a_finish_frees_its_replica_before_an_arrival_at_the_same_instant(times):
    # The preview on replica 1 finishes at 1.58 s, exactly when the third request arrives:
    # it finds replica 1 empty and is not queued behind the 720p on replica 0.
    arrivals = [at(0.0, OFFICIAL, 0), at(0.0, PREVIEW, 1), at(1.58, PREVIEW, 2)]
    outcomes = simulate(Layout.parse("1+1"), arrivals, times)
    assert outcomes[2].replica == 1
    assert outcomes[2].latency == pytest.approx(1.58)


def test_skip_drops_what_cannot_make_its_deadline_and_serve_runs_it_late(times):
    arrivals = [at(0.0, OFFICIAL, 0, 150.0), at(0.0, OFFICIAL, 1, 150.0), at(0.0, PREVIEW, 2, 200.0)]
    skipped = simulate(Layout.parse("1"), arrivals, times, late="skip")
    # The second 720p would end at 195.2 s > 150 s: dropped when it reaches the head at 97.6 s.
    assert [o.finish for o in skipped] == pytest.approx([97.6, None, 97.6 + 1.58])
    served = simulate(Layout.parse("1"), arrivals, times, late="serve")
    assert [o.finish for o in served] == pytest.approx([97.6, 195.2, 195.2 + 1.58])
    assert summarize(skipped) | {"per_kind": None, "mean_latency_s": None, "p95_latency_s": None} == {
        "requests": 3,
        "in_time": 2,
        "missed": 1,
        "dropped": 1,
        "mean_latency_s": None,
        "p95_latency_s": None,
        "per_kind": None,
    }
    served_summary = summarize(served)
    assert (served_summary["in_time"], served_summary["missed"], served_summary["dropped"]) == (2, 1, 0)
    assert served_summary["mean_latency_s"] == pytest.approx((97.6 + 195.2 + 196.78) / 3)
    assert served_summary["per_kind"] == {
        "official": {"requests": 2, "in_time": 1},
        "preview": {"requests": 1, "in_time": 1},
    }


def test_one_gpu_never_serves_720p_within_60_s_and_four_do(times):
    arrivals = [at(0.0, OFFICIAL, 0, 60.0)]
    assert not simulate(Layout.parse("1+1+1+1"), arrivals, times)[0].in_time
    assert simulate(Layout.parse("4"), arrivals, times)[0].in_time


def test_percentile_is_nearest_rank():
    assert percentile(list(range(1, 21)), 0.95) == 19
    assert percentile(list(range(100, 0, -1)), 0.95) == 95
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.95) is None


# --- inputs ------------------------------------------------------------------------------------


def test_poisson_arrivals_are_deterministic_by_seed():
    mix = parse_mix("mostly-previews")
    first = poisson_arrivals(mix, 0.5, 600.0, seed=3)
    assert first == poisson_arrivals(mix, 0.5, 600.0, seed=3)
    assert first != poisson_arrivals(mix, 0.5, 600.0, seed=4)
    assert all(0 <= a.time < 600.0 for a in first)
    assert [a.time for a in first] == sorted(a.time for a in first)
    # ~300 expected; 5 standard deviations either side.
    assert 300 - 5 * 300**0.5 < len(first) < 300 + 5 * 300**0.5


def test_layouts_and_mixes_parse_or_say_why():
    assert [layout.name for layout in default_layouts(4)] == ["1+1+1+1", "4", "2+1+1"]
    assert [layout.name for layout in default_layouts(8)] == ["1+1+1+1+1+1+1+1", "8", "2+1+1+1+1+1+1", "4+1+1+1+1"]
    assert Layout.parse("4+4").gpus == 8
    with pytest.raises(ValueError, match="'2\\+x'"):
        Layout.parse("2+x")
    with pytest.raises(ValueError, match="at least 1 GPU"):
        Layout.parse("0+4")
    assert parse_mix("preview:3:30,official:1:120") == {"preview": (3.0, 30.0), "official": (1.0, 120.0)}
    with pytest.raises(ValueError, match="kind must be one of"):
        parse_mix("huge:1:30")
    with pytest.raises(ValueError, match="kind:share:deadline_s"):
        parse_mix("preview:1")


def test_kinds_are_the_presets_and_count_tokens_like_the_service():
    presets = yaml.safe_load((PROJECT_ROOT / "configs" / "presets.yaml").read_text())["presets"]
    for name, kind in KINDS.items():
        preset = presets[name]
        assert (kind.width, kind.height, kind.num_frames, kind.steps) == (
            preset["width"],
            preset["height"],
            preset["num_frames"],
            preset["num_inference_steps"],
        )
        params = GenerationParams(
            prompt="p", negative_prompt="", width=kind.width, height=kind.height, num_frames=kind.num_frames,
            num_inference_steps=kind.steps, guidance_scale=5.0, fps=24, seed=0, preset=name,
        )  # fmt: skip
        assert kind.latent_tokens == params.latent_tokens
    assert OFFICIAL.latent_tokens == 27_280


def test_main_names_its_source_and_repeats_itself(tmp_path, capsys):
    args = ["--builtin", "--mix", "720p-interactive", "--load", "0.5", "--duration", "3600", "--seed", "1"]
    first = main([*args, "--json", str(tmp_path / "a.json")])
    out = capsys.readouterr().out
    assert "Service times from built-in" in out
    assert first == main(args)
    capsys.readouterr()
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["source"].startswith("built-in")
    assert [r["layout"] for r in written["results"]] == ["1+1+1+1", "4", "2+1+1"]
    assert all(r["requests"] == r["in_time"] + r["missed"] for r in written["results"])

    path = write_measurements(tmp_path, [{"gpus": 4, "setting": "1280x704x121, 50 steps", "time_s": 26.0}])
    main(["--measurements", str(path), "--mix", "720p-interactive", "--load", "0.5", "--duration", "600"])
    out = capsys.readouterr().out
    assert f"Service times from measured: {path}" in out
    assert "| official | 27280 | 4 | 26.00 |" in out


def test_a_layout_must_use_the_node_s_gpus():
    with pytest.raises(SystemExit):
        main(["--builtin", "--gpus", "4", "--layout", "2+1"])
