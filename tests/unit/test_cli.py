"""`wan-video` without a service: arguments, exit codes, the serve command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_app import cli
from serve_app.client import VideoClient
from tests.helpers.wire import sse, video


@pytest.fixture
def service(monkeypatch):
    """Routes the CLI's client to a MockTransport handler the test sets."""
    state = {"handler": None, "requests": []}

    def handler(request):
        state["requests"].append(request)
        return state["handler"](request)

    real = VideoClient
    monkeypatch.setattr(cli, "VideoClient", lambda *a, **k: real(*a, transport=httpx.MockTransport(handler), **k))
    return state


def test_generate_sends_only_given_options_follows_events_and_downloads(service, tmp_path, capsys):
    done = video(status="completed", progress=100, timings={"total_s": 0.5})

    def handler(request):
        if request.method == "POST":
            return httpx.Response(202, json=video())
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200,
                content=sse(1, {"type": "queued", "queue_position": 0, "attempt": 1})
                + sse(2, {"type": "progress", "step": 1, "total_steps": 3, "eta_s": 0.2})
                + sse(3, {"type": "completed", "video": done}),
            )
        return httpx.Response(200, content=b"mp4 bytes")

    service["handler"] = handler
    out = tmp_path / "out.mp4"
    code = cli.main(
        [
            "generate",
            "a red kite",
            "--size",
            "64x64",
            "--frames",
            "9",
            "--steps",
            "3",
            "--seed",
            "7",
            "-o",
            str(out),
            "--url",
            "http://svc",
            "--api-key",
            "k",
        ]
    )
    assert code == 0 and out.read_bytes() == b"mp4 bytes"
    post = service["requests"][0]
    assert json.loads(post.content) == {
        "prompt": "a red kite",
        "size": "64x64",
        "num_frames": 9,
        "num_inference_steps": 3,
        "seed": 7,
    }
    assert post.headers["authorization"] == "Bearer k" and post.headers["prefer"] == "respond-async"
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: video_abc completed 64x64 9 frames")
    assert "denoising" in captured.err  # the progress bar


def test_generate_of_a_failed_job_exits_1_with_the_reason(service, capsys):
    failed = video(status="failed", error={"code": "deadline_exceeded", "message": "stopped after step 2 of 3"})
    service["handler"] = lambda r: (
        httpx.Response(202, json=video())
        if r.method == "POST"
        else httpx.Response(200, content=sse(1, {"type": "failed", "video": failed}))
    )
    assert cli.main(["generate", "x", "--quiet", "--url", "http://svc"]) == 1
    assert "video_abc failed: deadline_exceeded: stopped after step 2 of 3" in capsys.readouterr().err


def test_service_errors_exit_2_with_the_service_message(service, capsys):
    service["handler"] = lambda r: httpx.Response(
        400, json={"error": {"code": "invalid_request", "param": "num_frames", "message": "num_frames=16 is not 4k+1"}}
    )
    assert cli.main(["generate", "x", "--frames", "16", "--url", "http://svc"]) == 2
    assert "invalid_request: num_frames=16 is not 4k+1 (param: num_frames)" in capsys.readouterr().err


@pytest.mark.parametrize("status, code", [(429, "over_capacity"), (503, "service_unavailable")])
def test_a_busy_service_exits_75_with_when_to_retry(service, capsys, status, code):
    service["handler"] = lambda r: httpx.Response(
        status,
        headers={"Retry-After": "12"},
        json={"error": {"code": code, "message": "cannot finish within 30 s now", "param": None, "retry_after_s": 12}},
    )
    assert cli.main(["generate", "x", "--url", "http://svc"]) == cli.EXIT_BUSY == 75
    err = capsys.readouterr().err
    assert code in err and "retry in 12 s" in err


def test_status_exit_code_follows_the_job(service, capsys):
    service["handler"] = lambda r: httpx.Response(200, json=video(status="failed", error={"code": "c", "message": "m"}))
    assert cli.main(["status", "video_abc", "--url", "http://svc"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"


def test_url_and_api_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WAN_VIDEO_URL", "http://elsewhere:9000")
    monkeypatch.setenv("WAN_VIDEO_API_KEY", "env-key")
    args = cli.build_parser().parse_args(["list"])
    assert (args.url, args.api_key) == ("http://elsewhere:9000", "env-key")


@pytest.mark.parametrize("argv", [["generate", "x", "--size", "64by64"], ["generate", "x", "--frames", "nine"], []])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_serve_uses_the_serve_script_of_this_environment():
    command = cli.serve_command("serve_config.yaml")
    assert command[1:] == ["run", "serve_config.yaml"] or command[1:] == [
        "-m",
        "ray.serve.scripts",
        "run",
        "serve_config.yaml",
    ]
    # The script next to this interpreter really is Ray Serve's CLI.
    help_text = subprocess.run([*command[:-2], "run", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "CONFIG_OR_IMPORT_PATH" in help_text
    if (Path(sys.executable).parent / "serve").exists():
        assert command[0] == str(Path(sys.executable).parent / "serve")


def test_serve_with_a_missing_config_exits_2(tmp_path, capsys):
    assert cli.main(["serve", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- delete, wait, presets, --image, unreachable, help ------------------------------------


def test_delete_sends_one_delete_per_id(service, capsys):
    service["handler"] = lambda r: httpx.Response(200, json={"id": r.url.path.rsplit("/", 1)[1], "deleted": True})
    assert cli.main(["delete", "video_a", "video_b", "--url", "http://svc"]) == 0
    assert [(r.method, r.url.path) for r in service["requests"]] == [
        ("DELETE", "/v1/videos/video_a"),
        ("DELETE", "/v1/videos/video_b"),
    ]
    assert capsys.readouterr().out.splitlines() == ["video_a: deleted", "video_b: deleted"]


def test_wait_of_a_failed_job_exits_1_without_following_it(service, capsys):
    failed = video(status="failed", error={"code": "deadline_exceeded", "message": "stopped at step 2"})
    service["handler"] = lambda r: httpx.Response(200, json=failed)
    assert cli.main(["wait", "video_abc", "--url", "http://svc"]) == 1
    assert [r.url.path for r in service["requests"]] == ["/v1/videos/video_abc"]
    assert "video_abc failed: deadline_exceeded: stopped at step 2" in capsys.readouterr().err


def test_presets_json_is_the_services_answer(service, capsys):
    answer = {"presets": {}, "limits": {}, "default_preset": "preview"}
    service["handler"] = lambda r: httpx.Response(200, json=answer)
    assert cli.main(["presets", "--json", "--url", "http://svc"]) == 0
    assert json.loads(capsys.readouterr().out) == answer
    assert service["requests"][0].url.path == "/v1/presets"


def test_generate_with_an_image_sends_it_as_the_sdk_does(service, tmp_path):
    (tmp_path / "cat.png").write_bytes(b"\x89PNG fake")
    service["handler"] = lambda r: httpx.Response(202, json=video())
    argv = ["generate", "a cat", "--image", str(tmp_path / "cat.png"), "--frames", "9", "--seed", "3", "--no-wait"]
    assert cli.main([*argv, "--url", "http://svc"]) == 0
    post = service["requests"][0]
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert post.headers["prefer"] == "respond-async"
    body = post.content
    assert b'name="input_reference"; filename="cat.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG fake' in body
    for name, value in (("prompt", b"a cat"), ("num_frames", b"9"), ("seed", b"3")):
        assert f'name="{name}"\r\n\r\n'.encode() + value in body


def test_an_unreachable_service_exits_69_saying_how_to_start_it(monkeypatch, capsys):
    def refuse(request):
        raise httpx.ConnectError("Connection refused", request=request)

    real = VideoClient
    monkeypatch.setattr(cli, "VideoClient", lambda *a, **k: real(*a, transport=httpx.MockTransport(refuse), **k))
    assert cli.main(["list", "--url", "http://svc"]) == cli.EXIT_UNREACHABLE == 69
    err = capsys.readouterr().err
    assert "cannot reach http://svc" in err and "`wan-video serve`" in err and "$WAN_VIDEO_URL" in err


def _subcommands(parser):
    import argparse

    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_of_every_command_has_help_and_every_help_lists_the_exit_codes():
    parser = cli.build_parser()
    for name, command in _subcommands(parser).items():
        for action in command._actions:
            assert action.help, f"wan-video {name}: {action.option_strings or action.dest} has no help text"
        if name != "serve":
            assert "exit codes:" in command.format_help(), name
    for code in (0, 1, 2, 69, 75, 130):
        assert f"\n  {code} " in parser.format_help()


def test_serve_port_and_host_override_the_config(monkeypatch, tmp_path):
    import yaml

    from serve_app import cli_serve

    config = tmp_path / "app.yaml"
    config.write_text("http_options: {host: 127.0.0.1, port: 8000}\napplications: []\n")
    ran = []
    monkeypatch.setattr(cli_serve.os, "execv", lambda path, argv: ran.append(argv))
    cli.main(["serve", "--config", str(config), "--port", "8123", "--host", "0.0.0.0"])
    [argv] = ran
    assert argv[-2] == "run"
    assert yaml.safe_load(Path(argv[-1]).read_text())["http_options"] == {"host": "0.0.0.0", "port": 8123}
    Path(argv[-1]).unlink()


def test_serve_finds_shipped_configs_by_name_from_anywhere(monkeypatch, tmp_path):
    from serve_app import cli_serve
    from serve_app.paths import CONFIG_DIR, DEFAULT_SERVE_CONFIG

    monkeypatch.chdir(tmp_path)
    assert cli_serve.find_config(None) == DEFAULT_SERVE_CONFIG
    assert cli_serve.find_config("serve_config.yaml") == DEFAULT_SERVE_CONFIG
    assert cli_serve.find_config("configs/serve_gpu.yaml") == CONFIG_DIR / "serve_gpu.yaml"
    assert cli_serve.find_config("serve_gpu.yaml") == CONFIG_DIR / "serve_gpu.yaml"
    (tmp_path / "serve_gpu.yaml").write_text("applications: []\n")
    assert cli_serve.find_config("serve_gpu.yaml") == tmp_path / "serve_gpu.yaml"  # the user's own file first
