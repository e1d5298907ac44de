"""Batch input parsing, idempotency keys and resume decisions, without a service."""

from __future__ import annotations

import json

import httpx
import pytest

from serve_app.batch import BatchItem, BatchRunner, item_key, load_items, main, parse_line, write_json
from serve_app.client import VideoClient


def test_parse_line_takes_id_or_line_number_and_keeps_fields():
    item = parse_line(3, '{"prompt": "a kite", "size": "64x64", "num_frames": 9}')
    assert (item.line, item.id, item.fields) == (3, "3", {"prompt": "a kite", "size": "64x64", "num_frames": 9})
    assert parse_line(4, '{"id": "kite-1", "prompt": "a kite"}').id == "kite-1"
    assert parse_line(5, '{"id": 12, "prompt": "a kite"}').id == "12"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"size": "64x64"}', "missing required field 'prompt'"),
        ('{"prompt": "x", "frames": 9}', "unknown field(s) ['frames']"),
        ('{"prompt": "x", "num_frames": "nine"}', "num_frames: Input should be a valid integer"),
        ('{"prompt": "x", "id": "../etc"}', "id='../etc' must be"),
        ('{"prompt": "x", "id": true}', "id=True must be"),
        ('{"prompt": "x", "id": "summary"}', "is reserved"),
    ],
)
def test_parse_line_rejects_with_a_reason(text, reason):
    with pytest.raises(ValueError) as info:
        parse_line(1, text)
    assert reason in str(info.value)


def test_load_items_reports_bad_lines_by_number_and_skips_blank_ones(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "one"}\n\n{oops\n{"id": "a", "prompt": "two"}\n{"prompt": "three"}\n')
    items, bad = load_items(path)
    assert [(i.line, i.id) for i in items] == [(1, "a"), (5, "5")]
    assert [(b.line, b.message.split(":")[0]) for b in bad] == [
        (3, "not valid JSON"),
        (4, "id='a' repeats the id of line 1"),
    ]


def test_item_key_ignores_formatting_but_not_content_or_id():
    a = parse_line(1, '{"id": "x", "prompt": "a kite", "seed": 1}')
    b = parse_line(9, '{ "seed":1,   "prompt":"a kite", "id":"x" }')
    assert a.key == b.key and a.key.startswith("wan-batch-") and len(a.key) <= 200
    assert item_key("y", a.fields) != a.key
    assert item_key("x", {**a.fields, "seed": 2}) != a.key


def test_is_done_needs_the_mp4_and_a_completed_sidecar_of_the_same_item(tmp_path):
    runner = BatchRunner(VideoClient("http://unused"), tmp_path)
    item = parse_line(1, '{"id": "a", "prompt": "a kite"}')
    assert not runner.is_done(item)
    write_json(tmp_path / "a.json", {"status": "completed", "batch": {"idempotency_key": item.key}})
    assert not runner.is_done(item)  # no mp4 yet: the download did not finish
    (tmp_path / "a.mp4").write_bytes(b"mp4")
    assert runner.is_done(item)
    edited = BatchItem(line=1, id="a", fields={"prompt": "a red kite"}, key=item_key("a", {"prompt": "a red kite"}))
    assert not runner.is_done(edited)  # the line changed since: generate it anew
    write_json(tmp_path / "a.json", {"status": "failed", "batch": {"idempotency_key": item.key}})
    assert not runner.is_done(item)
    (tmp_path / "a.json").write_text("{truncated")
    assert not runner.is_done(item)


def test_refused_item_is_recorded_failed_and_the_batch_goes_on(tmp_path, monkeypatch, capsys):
    """A 400 and an unreachable moment both end as failed items with a sidecar, not a crash."""
    keys = []

    def handler(request):
        keys.append(request.headers["idempotency-key"])
        body = json.loads(request.content)
        if body["prompt"] == "bad":
            return httpx.Response(
                400,
                json={
                    "error": {
                        "code": "invalid_request",
                        "param": "num_frames",
                        "message": "num_frames=16 is not of the form 4k+1",
                    }
                },
            )
        raise httpx.ConnectError("connection refused")

    transport = httpx.MockTransport(handler)
    real = VideoClient
    monkeypatch.setattr("serve_app.batch.VideoClient", lambda *a, **k: real(*a, transport=transport, **k))
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": "x", "prompt": "bad", "num_frames": 16}\n{"prompt": "down"}\nnot json\n')
    out = tmp_path / "out"

    assert main([str(jsonl), "--out", str(out), "--quiet", "--concurrency", "2"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["completed"], summary["failed"], summary["skipped"]) == (3, 0, 3, 0)
    by_line = {i["line"]: i for i in summary["items"]}
    assert by_line[1]["error"]["code"] == "invalid_request" and by_line[1]["error"]["http_status"] == 400
    assert by_line[2]["error"]["code"] == "connection_error"
    assert by_line[3]["error"]["code"] == "bad_line"
    sidecar = json.loads((out / "x.json").read_text())
    assert sidecar["status"] == "failed" and sidecar["error"]["param"] == "num_frames"
    assert sidecar["batch"]["id"] == "x" and sidecar["batch"]["line"] == 1
    sent_key = parse_line(1, jsonl.read_text().splitlines()[0]).key
    assert sidecar["batch"]["idempotency_key"] == sent_key and sent_key in keys
    err = capsys.readouterr().err
    assert "line 1 (id x): failed: invalid_request: num_frames=16" in err
    assert "line 3: failed: bad_line: not valid JSON" in err


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    assert info.value.code == 2
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "p.jsonl"), "--out", str(tmp_path), "--concurrency", "0"])
    assert info.value.code == 2


def test_busy_answers_are_waited_out_with_retry_after(tmp_path, monkeypatch):
    """429/503 are "later", not "failed": the item is retried after Retry-After, same idempotency key."""
    calls = []

    def handler(request):
        calls.append(request.headers["idempotency-key"])
        if len(calls) < 3:
            return httpx.Response(
                429,
                headers={"Retry-After": "1"},
                json={
                    "error": {
                        "code": "over_capacity",
                        "message": "busy",
                        "type": "rate_limit_error",
                        "param": None,
                        "retry_after_s": 1,
                    }
                },
            )
        return httpx.Response(400, json={"error": {"code": "stop_here", "message": "seen thrice", "param": None}})

    sleeps = []
    transport = httpx.MockTransport(handler)
    client = VideoClient("http://unused", transport=transport)
    runner = BatchRunner(client, tmp_path)
    monkeypatch.setattr(runner.stopping, "wait", lambda seconds: sleeps.append(seconds))
    result = runner.run_item(parse_line(1, '{"id": "a", "prompt": "a kite"}'))
    assert len(calls) == 3 and len(set(calls)) == 1
    assert sleeps == [1.0, 1.0]
    assert result.error["code"] == "stop_here"

    # A service busy for longer than the item may wait: the item fails with the 429.
    runner.max_busy_wait_s = 1.5
    calls.clear()
    sleeps.clear()

    def always_busy(request):
        calls.append(1)
        return httpx.Response(
            429, json={"error": {"code": "over_capacity", "message": "busy", "param": None, "retry_after_s": 1}}
        )

    runner.client = VideoClient("http://unused", transport=httpx.MockTransport(always_busy))
    result = runner.run_item(parse_line(1, '{"id": "b", "prompt": "a kite"}'))
    assert result.error["code"] == "over_capacity" and result.error["http_status"] == 429
    assert sum(sleeps) <= 1.5 + 0.1
