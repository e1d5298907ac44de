"""Which processes may import torch.

The gateway relays only numpy and plain objects; it must never import torch,
which a first time inside Ray's deserialisation thread segfaulted on the GPU
image (torch 2.11 + CUDA). Core modules stay importable without Ray or torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["deployments.gateway", "serve_app.app", "serve_app.api.gateway_app"])
def test_gateway_side_never_imports_torch(module):
    assert "torch" not in _imported_after(module)


@pytest.mark.parametrize("module", ["serve_app.params", "serve_app.config", "serve_app.deadline", "serve_app.errors"])
def test_core_modules_import_neither_ray_nor_torch(module):
    loaded = _imported_after(module)
    assert "torch" not in loaded and "ray" not in loaded
