"""Shared fixtures: the tiny model, built once per test session."""

from __future__ import annotations

import pytest

from serve_app.config import load_model_profile


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data directory per session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_profile():
    return load_model_profile("tiny")
