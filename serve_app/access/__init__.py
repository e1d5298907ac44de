"""Gateway protection: API keys, per-key rate limits and concurrent-job caps, body size.

`serve_app.access.guard.AccessGuard` is what the gateway calls;
`serve_app.settings.access.AccessConfig` is its `access:` block of
serve_config.yaml. See docs/access.md.

Nothing is imported here, so `python -m serve_app.access.keys` runs its module
once (runpy warns when a package has already imported the module it runs).
"""
