"""Re-exports the `access:` schema, which lives in `serve_app.settings.access`.

Kept because tests import these two names from here; code imports from
`serve_app.settings.access`.
"""

from serve_app.settings.access import AccessConfig, ApiKeyEntry

__all__ = ["AccessConfig", "ApiKeyEntry"]
