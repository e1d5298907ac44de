"""Where configs and data are: a checkout's files, and the data directory's default and overrides.

The installed-wheel layout (configs as package data, data in the user's data directory) is
tests/unit/test_wheel.py, which runs a real wheel outside this tree.
"""

from __future__ import annotations

from pathlib import Path

from serve_app import paths
from serve_app.config import ServiceArgs


def test_a_checkout_is_its_own_project_root():
    assert paths.SOURCE_CHECKOUT and paths.PROJECT_ROOT == Path(paths.__file__).resolve().parents[1]
    assert paths.is_checkout(paths.PROJECT_ROOT) and not paths.is_checkout(paths.PACKAGE_DIR)
    # The package data of a wheel is the checkout's own files, through symlinks the build copies.
    assert (paths.BUNDLE_DIR / "configs" / "presets.yaml").read_bytes() == (
        paths.CONFIG_DIR / "presets.yaml"
    ).read_bytes()
    assert (paths.BUNDLE_DIR / "serve_config.yaml").resolve() == paths.DEFAULT_SERVE_CONFIG.resolve()


def test_data_dir_default_is_the_checkouts_data_folder(monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    assert ServiceArgs().data_path == paths.PROJECT_ROOT / "data"
    assert ServiceArgs(data_dir="elsewhere").data_path == paths.PROJECT_ROOT / "elsewhere"


def test_the_environment_sets_the_default_but_not_an_explicit_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "srv"))
    assert ServiceArgs().data_path == tmp_path / "srv"
    assert ServiceArgs().checkpoint_path == tmp_path / "srv" / "checkpoints"
    assert ServiceArgs(data_dir=str(tmp_path / "mine")).data_path == tmp_path / "mine"


def test_user_data_home_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert paths.user_data_home() == tmp_path / "wan-video"
    monkeypatch.setenv("XDG_DATA_HOME", "relative")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.user_data_home() == tmp_path / "home" / ".local/share/wan-video"
