"""Integration tests use the session's running app (tests/conftest.py, tests/helpers/app.py)."""
