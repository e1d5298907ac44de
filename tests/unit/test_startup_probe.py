"""bench/startup_probe.py's child, off the card: one stage built as its replica would be
(the deployment class, no Ray), reporting its start the way /healthz shows it.

The probe only runs on a GPU host, where nothing else would notice that it reads
a replica attribute that moved (it broke once when the worker left deployments/base.py).
"""

from __future__ import annotations

import json

import pytest

from bench import startup_probe
from serve_app import metrics


def test_the_child_reports_a_tiny_stages_startup_phases_and_warm_up(data_dir, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "_enabled", False)  # no Ray here to report metrics to
    args = {"data_dir": str(data_dir), "compile_cache_dir": "off", "warmup": True}
    startup_probe.child("video_encoder", json.dumps(args))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("PROBE "))
    report = json.loads(line.removeprefix("PROBE "))
    assert {"import_diffusers", "gpu_init", "from_pretrained"} <= set(report["startup_phases"])
    assert report["warmup_s"], "the tiny video encoder warms at least one decode"
    assert report["constructor_s"] > 0 and report["import_deployment_s"] >= 0


@pytest.mark.parametrize(
    "text, changed",
    [("nobench:cudnn_benchmark=false", {"cudnn_benchmark": False}), ("two:a=1,b=x", {"a": 1, "b": "x"})],
)
def test_a_variant_changes_only_the_speed_keys_it_names(text, changed):
    speed = {"cudnn_benchmark": True, "compile": "default"}
    name, result = startup_probe.parse_variant(text, speed)
    assert name == text.split(":")[0]
    assert result == {**speed, **changed}
    assert speed == {"cudnn_benchmark": True, "compile": "default"}  # the profile's own options untouched
