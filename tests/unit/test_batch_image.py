"""The batch runner's `image` column: paths, keys, per-line errors, and a batch through the real
gateway (a fake generator, no Ray) that sends its pictures as `input_reference`."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from serve_app.batch import BatchRunner, item_key, load_items, main, parse_line
from serve_app.client import VideoClient
from tests.helpers.fakes import FakeGenerator
from tests.helpers.images import png
from tests.helpers.service import api_client, gateway_over

KITE = png(64, 48, seed=1)
BOAT = png(64, 48, seed=2)
SMALL = {"size": "64x64", "num_frames": 5, "fps": 8, "num_inference_steps": 2}


def line(**fields) -> str:
    return json.dumps({"prompt": "a kite", **fields})


def test_a_relative_image_path_starts_at_the_batch_files_folder(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "kite.png").write_bytes(KITE)
    item = parse_line(1, line(id="k", image="pics/kite.png", seed=3), tmp_path)
    assert item.image is not None and item.image.path == tmp_path / "pics" / "kite.png"
    assert item.image.sha256 == hashlib.sha256(KITE).hexdigest()
    assert item.fields == {"prompt": "a kite", "seed": 3}  # "image" is no request field: it is sent as a file
    absolute = parse_line(1, line(id="k", image=str(tmp_path / "pics" / "kite.png"), seed=3), tmp_path / "elsewhere")
    assert absolute.image == item.image and absolute.key == item.key


def test_the_key_follows_the_pictures_bytes_not_its_path(tmp_path):
    (tmp_path / "a.png").write_bytes(KITE)
    (tmp_path / "b.png").write_bytes(KITE)
    with_image = parse_line(1, line(id="k", image="a.png"), tmp_path)
    assert parse_line(1, line(id="k", image="b.png"), tmp_path).key == with_image.key  # same picture
    text_only = parse_line(1, line(id="k"), tmp_path)
    assert text_only.key == item_key("k", {"prompt": "a kite"})  # text items keep their keys (resume)
    assert with_image.key != text_only.key
    (tmp_path / "a.png").write_bytes(BOAT)
    assert parse_line(1, line(id="k", image="a.png"), tmp_path).key != with_image.key  # another picture


@pytest.mark.parametrize(
    "image, reason",
    [
        ("missing.png", "image='missing.png': no such file ("),
        ("pics", "is a folder, not an image file"),
        ("", "must be a file path"),
        (7, "image=7 must be a file path"),
    ],
)
def test_an_image_that_cannot_be_read_is_a_reason_naming_the_column(tmp_path, image, reason):
    (tmp_path / "pics").mkdir()
    with pytest.raises(ValueError) as info:
        parse_line(1, line(image=image), tmp_path)
    assert reason in str(info.value)


def test_an_image_and_an_input_reference_together_are_refused(tmp_path):
    (tmp_path / "kite.png").write_bytes(KITE)
    text = line(image="kite.png", input_reference={"image_url": "data:image/png;base64,AAAA"})
    with pytest.raises(ValueError, match="give image \\(a file path\\) or input_reference, not both"):
        parse_line(1, text, tmp_path)


def test_a_missing_image_fails_its_line_only(tmp_path, monkeypatch):
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    (batch_dir / "kite.png").write_bytes(KITE)
    jsonl = batch_dir / "p.jsonl"
    jsonl.write_text(line(id="a", image="kite.png") + "\n" + line(id="b", image="gone.png") + "\n" + line(id="c"))
    monkeypatch.chdir(tmp_path)  # relative to the batch file, not to where the command runs
    items, bad = load_items(jsonl)
    assert [(i.id, i.image.path if i.image else None) for i in items] == [("a", batch_dir / "kite.png"), ("c", None)]
    assert [(b.line, b.message) for b in bad] == [(2, f"image='gone.png': no such file ({batch_dir / 'gone.png'})")]


def test_a_picture_changed_after_the_batch_was_read_fails_its_item_before_sending(tmp_path):
    def handler(request):
        raise AssertionError("nothing may be sent for a picture the key does not describe")

    (tmp_path / "kite.png").write_bytes(KITE)
    item = parse_line(1, line(id="k", image="kite.png"), tmp_path)
    (tmp_path / "kite.png").write_bytes(BOAT)
    runner = BatchRunner(VideoClient("http://unused", transport=httpx.MockTransport(handler)), tmp_path)
    result = runner.run_item(item)
    assert result.status == "failed" and result.error["code"] == "image_file" and result.error["param"] == "image"
    assert "changed since the batch was read" in result.error["message"]
    assert json.loads((tmp_path / "k.json").read_text())["error"]["code"] == "image_file"


def test_a_batch_with_images_through_the_gateway(tmp_path, monkeypatch, capsys):
    generator = FakeGenerator()
    gateway = gateway_over(tmp_path / "service", generator)
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    (batch_dir / "kite.png").write_bytes(KITE)
    (batch_dir / "not-an-image.png").write_bytes(b"plain text, not a picture")
    jsonl = batch_dir / "p.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                line(id="kite", image="kite.png", seed=1, **SMALL),
                line(id="lost", image="lost.png", seed=2, **SMALL),
                line(id="text", seed=3, **SMALL),
                line(id="bad", image="not-an-image.png", seed=4, **SMALL),
            ]
        )
    )
    out = tmp_path / "out"
    with api_client(gateway) as http:

        def forward(request: httpx.Request) -> httpx.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            answer = http.request(
                request.method, request.url.path, params=request.url.params, headers=headers, content=request.read()
            )
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

        real = VideoClient
        transport = httpx.MockTransport(forward)
        monkeypatch.setattr("serve_app.batch.VideoClient", lambda *a, **k: real(*a, transport=transport, **k))
        code = main([str(jsonl), "--out", str(out), "--quiet", "--concurrency", "1"])
    gateway.stores.jobs.close()

    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    statuses = {i["id"] or i["line"]: (i["status"], (i["error"] or {}).get("code")) for i in summary["items"]}
    assert statuses == {
        "kite": ("completed", None),
        2: ("failed", "bad_line"),
        "text": ("completed", None),
        "bad": ("failed", "invalid_image"),
    }
    kite = json.loads((out / "kite.json").read_text())
    assert kite["input_reference_sha256"] == hashlib.sha256(KITE).hexdigest()
    assert kite["batch"]["image"] == str(batch_dir / "kite.png") and (out / "kite.mp4").is_file()
    assert json.loads((out / "text.json").read_text())["input_reference_sha256"] is None
    bad = json.loads((out / "bad.json").read_text())
    assert bad["error"]["param"] == "input_reference" and bad["error"]["http_status"] == 400
    sent = sorted(params.input_reference_sha256 or "" for params, _ in generator.calls)
    assert sent == ["", hashlib.sha256(KITE).hexdigest()]
    err = capsys.readouterr().err
    assert f"line 2: failed: bad_line: image='lost.png': no such file ({batch_dir / 'lost.png'})" in err
