"""What a web page in someone's browser may do here: the Host it reached us by, and its Origin.

Two browser attacks need no key when auth is off (the local `make run`):

- DNS rebinding: a page on evil.example re-points its name at 127.0.0.1; its own
  scripts, same-origin as far as the browser knows, then read our answers. Its
  requests carry `Host: evil.example`, which `TrustedHostMiddleware` refuses
  (`access.allowed_hosts`; unset: loopback names only while auth is off).
- Cross-site requests: an HTML form on any site can POST urlencoded or multipart
  bodies (both of which the create route takes: the OpenAI SDK sends multipart)
  without a CORS preflight, so it could start jobs; a cross-site WebSocket is
  not subject to CORS at all. Browsers say where such a request comes from
  (`Origin`, and `Sec-Fetch-Site`), so a request that states another origin
  than ours, and not one in `access.trusted_origins`, is refused. SDKs and curl
  send neither header and are not affected.

Both answer in the service's JSON error shape rather than Starlette's plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.error_handlers import error_response
from serve_app.errors import Forbidden, InvalidRequest, ServiceError
from serve_app.settings.access import LOCAL_HOSTS, AccessConfig

# Methods a page can send without a preflight are GET, HEAD and POST; PUT, PATCH and
# DELETE need one (which fails: no CORS here), but are checked too in case CORS is added.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of requests a page on another origin made.
CROSS_SITE = frozenset({"cross-site", "same-site"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class UntrustedHost(InvalidRequest):
    """The request's Host is not one this gateway answers (HTTP 400, param 'Host')."""

    status_code = 400
    code = "untrusted_host"


class CrossOriginRefused(Forbidden):
    """A web page on another origin sent a request that changes state (HTTP 403, param 'Origin')."""

    code = "cross_origin_refused"


def allowed_hosts(config: AccessConfig, auth_enabled: bool) -> list[str]:
    """`access.allowed_hosts`, or its default: loopback names with auth off, any host with auth on."""
    if config.allowed_hosts is not None:
        return list(config.allowed_hosts)
    return ["*"] if auth_enabled else list(LOCAL_HOSTS)


def _netloc(scheme: str, host: str, port: int | None) -> str:
    """host[:port], the port left out when it is the scheme's default (as browsers write Origin)."""
    host = host.lower()
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def _origin_netloc(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return _netloc(parts.scheme, host, port)


def _host_netloc(host_header: str, origin_scheme: str) -> str:
    """The Host header as an origin of `origin_scheme` would name it: a proxy that ends TLS
    forwards 'Host: example.com' for a page whose Origin is 'https://example.com'."""
    host, sep, port = host_header.rpartition(":") if not host_header.endswith("]") else (host_header, "", "")
    if not sep or not port.isdigit():
        return host_header.lower()
    return _netloc(origin_scheme, host, int(port))


class BrowserGuard:
    """ASGI middleware: the Host check (Starlette's), then the Origin check of state-changing
    requests and WebSocket handshakes."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str], trusted_origins: Sequence[str]) -> None:
        self.app = app
        self.hosts = list(hosts)
        # Starlette decides; `_passed` only records that it would let the request through,
        # so the refusal can be answered in our own error shape.
        self._host_check = TrustedHostMiddleware(self._passed, allowed_hosts=self.hosts, www_redirect=False)
        self.trusted = {netloc for netloc in map(_origin_netloc, trusted_origins) if netloc}

    @staticmethod
    async def _passed(scope: Scope, receive: Receive, send: Send) -> None:
        scope["wan.trusted_host"] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        error = await self._refusal(scope)
        if error is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await error_response(error)(scope, receive, send)
        else:
            # A handshake refused before `accept` (ASGI: close with 403 unless the server
            # supports denial responses); the client sees the connection fail.
            await send({"type": "websocket.close", "code": 1008, "reason": error.code})

    async def _refusal(self, scope: Scope) -> ServiceError | None:
        check_scope = dict(scope)
        await self._host_check(check_scope, _never_receive, _never_send)
        headers = Headers(scope=scope)
        if not check_scope.get("wan.trusted_host"):
            return UntrustedHost(
                f"Host {headers.get('host', '')[:100]!r} is not one this service answers; add it to "
                f"access.allowed_hosts (now {self.hosts})",
                param="Host",
            )
        if scope["type"] == "http" and scope["method"] not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site") in CROSS_SITE:
                return CrossOriginRefused(
                    "a web page on another site may not send this request (Sec-Fetch-Site: "
                    f"{headers['sec-fetch-site']}); list its origin in access.trusted_origins",
                    param="Origin",
                )
            return None  # not a browser: SDKs and curl send no Origin
        netloc = _origin_netloc(origin)
        if netloc is not None and (
            netloc in self.trusted or netloc == _host_netloc(headers.get("host", ""), urlsplit(origin).scheme)
        ):
            return None
        return CrossOriginRefused(
            f"a web page on origin {origin[:100]!r} may not send this request here; only this service's own "
            "origin and access.trusted_origins may",
            param="Origin",
        )


async def _never_receive() -> dict:
    raise RuntimeError("the host check reads no body")


async def _never_send(message: dict) -> None:
    # TrustedHostMiddleware answers a refused host itself; that answer is replaced by ours.
    return None
