"""Durable jobs: the record, the store interface and its backends, the runner."""
