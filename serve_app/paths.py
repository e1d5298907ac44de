"""Where the project's files are, independent of the process's working directory.

Ray replicas do not promise to run in the directory `serve run` was started
from, so every relative path in config is resolved here, never against the
working directory. Two layouts:

- a source checkout (`make run`, an editable install): the configs are the
  checkout's configs/ and serve_config.yaml, relative config paths are taken
  from the checkout root, and data goes to <checkout>/data, as it always has;
- an installed wheel (`pip install .`): configs/ and serve_config.yaml ship
  inside the package as package data (serve_app/bundled/, symlinks to the
  checkout's files that the wheel build copies), relative config paths are
  taken from there, and data goes to the user's data directory, never into
  site-packages.

The data directory (`data_dir` left empty, the default) is, in this order:
$WAN_VIDEO_DATA_DIR; <checkout>/data in a checkout; $XDG_DATA_HOME/wan-video
(~/.local/share/wan-video) for an installed package. A relative `data_dir`,
`checkpoint_dir` or `compile_cache_dir` is taken from the checkout root, or
from that user data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Package data: what an installed package has instead of a checkout's files.
BUNDLE_DIR = PACKAGE_DIR / "bundled"
DATA_DIR_ENV = "WAN_VIDEO_DATA_DIR"
APP_DIR_NAME = "wan-video"


def is_checkout(root: Path) -> bool:
    """Whether `root` is this project's source tree (not, say, a site-packages that holds the package)."""
    markers = (root / "pyproject.toml", root / "serve_config.yaml")
    return all(marker.is_file() for marker in markers) and (root / "configs").is_dir()


SOURCE_CHECKOUT = is_checkout(PACKAGE_DIR.parent)
# Relative config paths start here: the checkout root, or the package's bundled files.
PROJECT_ROOT = PACKAGE_DIR.parent if SOURCE_CHECKOUT else BUNDLE_DIR
CONFIG_DIR = PROJECT_ROOT / "configs"
MODEL_PROFILE_DIR = CONFIG_DIR / "models"
# `serve run` of this file: the whole app, tiny model, CPU.
DEFAULT_SERVE_CONFIG = PROJECT_ROOT / "serve_config.yaml"


def resolve(path: str | Path) -> Path:
    """An absolute path: relative ones are taken from the project root (see above)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()


def user_data_home() -> Path:
    """$XDG_DATA_HOME/wan-video, else ~/.local/share/wan-video (the XDG base directory default)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".local/share"
    return base / APP_DIR_NAME


def data_base() -> Path:
    """Where relative data paths start: the checkout root, or the user data directory."""
    return PROJECT_ROOT if SOURCE_CHECKOUT else user_data_home()


def default_data_dir() -> Path:
    """The data directory when config names none: $WAN_VIDEO_DATA_DIR, <checkout>/data, or the user data directory."""
    override = os.environ.get(DATA_DIR_ENV, "")
    if override:
        # Made absolute in the process that reads it; `wan-video serve` makes it absolute
        # before Ray starts, so replicas in other working directories agree.
        return Path(override).expanduser().resolve()
    return PROJECT_ROOT / "data" if SOURCE_CHECKOUT else user_data_home()


def resolve_data(path: str | Path) -> Path:
    """A data path (a directory the service writes): '' is the default data directory,
    relative paths are taken from `data_base()`; never inside an installed package."""
    if str(path) == "":
        return default_data_dir()
    p = Path(path).expanduser()
    return p if p.is_absolute() else (data_base() / p).resolve()
