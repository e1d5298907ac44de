"""Every shipped serve config logs JSON: Serve's components and each application.

Ray Serve's `logging_config` at the top of a config reaches the controller and
proxies (through `serve deploy`, which KubeRay uses) and is the default of
every application that sets none; an application's own wins for it. The
KubeRay manifest's `serveConfigV2` is a shipped config too.
"""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import EncodingType, LoggingConfig, ServeDeploySchema

from serve_app.paths import CONFIG_DIR, PROJECT_ROOT

RAYSERVICE = PROJECT_ROOT / "deploy" / "kuberay" / "rayservice.yaml"


def _shipped_configs() -> dict[str, dict]:
    files = [PROJECT_ROOT / "serve_config.yaml", *sorted(CONFIG_DIR.glob("serve_*.yaml"))]
    configs = {str(p.relative_to(PROJECT_ROOT)): yaml.safe_load(p.read_text()) for p in files}
    for doc in yaml.safe_load_all(RAYSERVICE.read_text()):
        if doc and doc.get("kind") == "RayService":
            configs[f"{RAYSERVICE.relative_to(PROJECT_ROOT)} serveConfigV2"] = yaml.safe_load(
                doc["spec"]["serveConfigV2"]
            )
    return configs


SHIPPED = _shipped_configs()


def _not_json(config: dict) -> list[str]:
    """Where `config` leaves Serve's default (TEXT) encoding in place."""
    schema = ServeDeploySchema.model_validate(config)
    found = []
    if schema.logging_config is None or schema.logging_config.encoding != EncodingType.JSON:
        found.append("the controller and proxies (top-level logging_config)")
    for app in schema.applications:
        effective: LoggingConfig | None = app.logging_config or schema.logging_config
        if effective is None or effective.encoding != EncodingType.JSON:
            found.append(f"application {app.name!r}")
    return found


def test_the_shipped_configs_are_all_found():
    assert {"serve_config.yaml", "configs/serve_gpu.yaml", "configs/serve_gpu_2x.yaml"} <= set(SHIPPED)
    assert any(name.endswith("serveConfigV2") for name in SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_logs_json(name):
    assert _not_json(SHIPPED[name]) == []


def test_the_check_sees_an_application_that_overrides_the_top_level_json():
    config = {
        "logging_config": {"encoding": "JSON"},
        "applications": [
            {"name": "a", "import_path": "m:app", "route_prefix": "/a"},
            {"name": "b", "import_path": "m:app", "route_prefix": "/b", "logging_config": {"encoding": "TEXT"}},
        ],
    }
    assert _not_json(config) == ["application 'b'"]
    del config["logging_config"]
    assert _not_json(config) == [
        "the controller and proxies (top-level logging_config)",
        "application 'a'",
        "application 'b'",
    ]
