"""Who is calling: FastAPI dependencies over the access checks the gateway keeps in
`app.state` (`guard`: API keys and limits, None when off; `admin_access`)."""

from __future__ import annotations

from fastapi import Depends, Header, Request, WebSocket

from serve_app.access.keys import Principal
from serve_app.access.limits import BucketKind


def _caller(kind: BucketKind):
    async def dependency(request: Request) -> Principal | None:
        """The request's principal (401/403) after its rate check (429); None when access control is off."""
        guard = request.app.state.guard
        if guard is None:
            return None
        principal = guard.authenticate(request.headers.get("authorization"))
        guard.check_rate(principal, kind)
        return principal

    return dependency


CREATOR = Depends(_caller("create"))
READER = Depends(_caller("read"))


def websocket_caller(websocket: WebSocket) -> Principal | None:
    """As READER, for a WebSocket. Browsers cannot set headers on one: the key may come
    as ?access_token= (RFC 6750's query form) instead."""
    guard = websocket.app.state.guard
    if guard is None:
        return None
    header = websocket.headers.get("authorization")
    token = websocket.query_params.get("access_token")
    principal = guard.authenticate(header if header or not token else f"Bearer {token}")
    guard.check_rate(principal, "read")
    return principal


async def _admin(request: Request, authorization: str | None = Header(None)) -> None:
    # The address the gateway sees (the proxy's, behind one): the admin bucket is per address.
    client = request.client.host if request.client is not None else None
    request.app.state.admin_access.check(authorization, client)


ADMIN = Depends(_admin)
