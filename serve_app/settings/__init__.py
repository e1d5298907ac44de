"""Settings: the pure pydantic types of serve_config.yaml, model profiles and configs/*.yaml.

The bottom of the project above errors and paths: these modules import only
pydantic, yaml, the standard library, `serve_app.errors`, `serve_app.paths`
and each other (tests/unit/test_layers.py), so any module may import its
options from here without pulling in what uses them. `serve_app.config`
composes them into `ServiceArgs` and re-exports them.

Nothing is imported here: importing one schema should not load them all.
"""
