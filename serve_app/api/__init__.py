"""The HTTP layer, split like vLLM's entrypoints: protocol (request and response
models), routes (FastAPI, thin), service (the logic behind the routes)."""
