"""The HTTP layer, split like vLLM's entrypoints:

    protocol.py        request and response models (pydantic)
    gateway_app.py     build_gateway: every part below made and wired, without Ray
    videos.py          the /v1/videos routes
    create.py          POST /v1/videos as numbered steps (VideoCreator)
    views.py           read, list, content, cancel, delete, events (VideoViews)
    admin.py           the /v1/cache admin routes
    health.py          /healthz and /v1/presets
    web.py             the web page
    callers.py         who is calling (API keys, rate limits, admin), as FastAPI dependencies
    body.py            reading a create body, bounded
    error_handlers.py  one JSON error shape for every error

Routes are module-level `APIRouter`s; their handlers find what they call in
`request.app.state`, which `build_gateway` fills.
"""
