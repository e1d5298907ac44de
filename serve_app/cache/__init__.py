"""The result cache: canonical keys, the index backends, single-flight."""
