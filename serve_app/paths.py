"""Where the project's files are, independent of the process's working directory.

Ray replicas do not promise to run in the directory `serve run` was started
from, so every relative path in config is resolved against the project root.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
MODEL_PROFILE_DIR = CONFIG_DIR / "models"


def resolve(path: str | Path) -> Path:
    """An absolute path: relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()
