"""A real HTTP server on 127.0.0.1 (port 0) inside the test's own event loop, recording what webhooks bring.

aiohttp is optional: importing this module skips the importing test module
without it, as `pytest.importorskip` does.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

web = pytest.importorskip("aiohttp.web")


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def receiver(respond):
    """A real HTTP server on 127.0.0.1; `respond(rec, request)` makes each answer."""
    rec: Receiver | None = None

    async def handle(request):
        rec.seen.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return await respond(rec, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook", port=port)
    try:
        yield rec
    finally:
        rec.release.set()  # un-hang handlers that wait forever
        await runner.cleanup()


def statuses(*codes: int):
    """A responder answering with `codes` in turn, then repeating the last one."""

    async def respond(rec, request):
        code = codes[min(len(rec.seen) - 1, len(codes) - 1)]
        return web.Response(status=code, text="ok" if code < 300 else "no")

    return respond
