"""`wan-video serve`: run the application (`serve run CONFIG`) from a checkout or an installed package.

The config is found wherever the user is: a path that exists, else one of the
configs this installation ships (serve_config.yaml, configs/serve_gpu.yaml, ...;
package data of an installed wheel, the checkout's files in a source tree), so
`pip install .` then `wan-video serve` works from any directory. `--check`
builds the application as `serve run` would, without starting Ray, and says
where its data and configs are.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from serve_app.paths import CONFIG_DIR, DATA_DIR_ENV, DEFAULT_SERVE_CONFIG, PROJECT_ROOT, resolve

EXIT_OK, EXIT_ERROR = 0, 2
OUR_BUILDER = "serve_app.app:build_app"


def shipped_configs() -> list[str]:
    """The serve configs this installation has, as `--config` accepts them."""
    names = [DEFAULT_SERVE_CONFIG.name] if DEFAULT_SERVE_CONFIG.is_file() else []
    names += sorted(f"configs/{p.name}" for p in CONFIG_DIR.glob("serve*.yaml"))
    return names


def find_config(name: str | None) -> Path:
    """The serve config `name` means: a file that exists (from the working directory), else a
    shipped one by its path in the project (configs/serve_gpu.yaml) or its file name (serve_gpu.yaml).
    None: the shipped serve_config.yaml. FileNotFoundError names what was looked for and what ships."""
    if name is None:
        candidates = [DEFAULT_SERVE_CONFIG]
    else:
        given = Path(name).expanduser()
        candidates = [given] if given.is_absolute() else [given, resolve(given), CONFIG_DIR / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"config {name or str(DEFAULT_SERVE_CONFIG)!r} does not exist (looked in {os.getcwd()} and {PROJECT_ROOT}); "
        f"shipped configs: {', '.join(shipped_configs()) or 'none'}"
    )


def serve_command(config: str) -> list[str]:
    """`serve run CONFIG` with the Ray of this Python environment.

    The `serve` console script is installed next to this interpreter (the
    venv's bin/), which need not be on PATH; `python -m ray.serve.scripts`
    is the same CLI when no script was installed.
    """
    script = Path(sys.executable).parent / "serve"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "run", config]
    found = shutil.which("serve")
    if found:
        return [found, "run", config]
    return [sys.executable, "-m", "ray.serve.scripts", "run", config]


def with_http_options(config: Path, host: str | None, port: int | None) -> Path:
    """`config` with http_options.host/port replaced, written next to nothing the user owns
    (a temporary file: `serve run` reads it once, at start)."""
    if host is None and port is None:
        return config
    data = yaml.safe_load(config.read_text()) or {}
    http = data.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    fd, path = tempfile.mkstemp(prefix=f"wan-video-{config.stem}-", suffix=".yaml")
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=False)
    return Path(path)


def _builder(import_path: str) -> Any:
    module, _, attr = import_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def check(config: Path) -> list[str]:
    """Build every application of `config` as `serve run` would (no Ray started): the lines
    to print about each. ValueError (pydantic's included) or OSError for a broken config."""
    from serve_app.config import ServiceArgs

    data = yaml.safe_load(config.read_text()) or {}
    http = data.get("http_options") or {}
    lines = [f"config: {config}", f"http: {http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"]
    for app in data.get("applications") or []:
        import_path, args = app.get("import_path", ""), app.get("args") or {}
        built = _builder(import_path)
        if callable(built):
            built(args)
        lines.append(f"application {app.get('name', 'default')!r} ({import_path}): builds")
        if import_path == OUR_BUILDER:
            service = ServiceArgs.model_validate(args)
            profile = service.model_profile()
            lines += [
                f"  model: {profile.name} ({profile.identity})",
                f"  data_dir: {service.data_path}",
                f"  presets: {resolve(service.presets_file)}",
                f"  tiers: {resolve(service.admission.tiers_file)}",
            ]
    return lines


def cmd_serve(args: argparse.Namespace) -> int:
    def err(message: str) -> None:
        print(f"wan-video: {message}", file=sys.stderr)

    try:
        config = find_config(args.config)
    except FileNotFoundError as exc:
        err(str(exc))
        return EXIT_ERROR
    data_dir = os.environ.get(DATA_DIR_ENV, "")
    if data_dir:
        # Absolute before Ray starts: replicas inherit the environment, not this working directory.
        os.environ[DATA_DIR_ENV] = str(Path(data_dir).expanduser().resolve())
    if args.check:
        try:
            lines = check(config)
        except (ValueError, OSError, ImportError, AttributeError) as exc:
            err(f"{config}: {exc}")
            return EXIT_ERROR
        print("\n".join(lines))
        return EXIT_OK
    command = serve_command(str(with_http_options(config, args.host, args.port)))
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: Ctrl-C and SIGTERM reach `serve run` directly, which
    # shuts the application down cleanly.
    os.execv(command[0], command)
    return EXIT_ERROR  # not reached


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the application (serve run CONFIG) in the foreground",
        description="Run the application in the foreground with `serve run CONFIG` (Ctrl-C stops it). "
        "Works from any directory: CONFIG is a file, or one this installation ships. Data goes to "
        f"${DATA_DIR_ENV}, else <checkout>/data in a source tree, else ~/.local/share/wan-video.",
    )
    serve.add_argument(
        "--config",
        metavar="CONFIG",
        help="Ray Serve config: a path, or a shipped one by name "
        f"({', '.join(shipped_configs())}); default: the shipped serve_config.yaml (tiny model, CPU)",
    )
    serve.add_argument("--host", help="listen on this address instead of the config's http_options.host")
    serve.add_argument("--port", type=int, help="listen on this port instead of the config's http_options.port")
    serve.add_argument(
        "--check",
        action="store_true",
        help="build the application as serve run would, print where its config and data are, and exit (starts no Ray)",
    )
    serve.set_defaults(run=None)
