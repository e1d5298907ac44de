"""Issue 15 item 12, the browser half: with auth off, a web page elsewhere can neither start
jobs here (cross-site form posts, cross-site WebSockets) nor read answers through DNS
rebinding (a Host this service does not answer to). Over the gateway `build_gateway` makes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from serve_app.access.config import AccessConfig
from serve_app.access.guard import AccessGuard
from serve_app.config import ServiceArgs
from tests.helpers.access import ALICE, keyed_config
from tests.helpers.fakes import FakeGenerator
from tests.helpers.service import REQUEST, TEST_TIMINGS, api_client, gateway_over

FORM = {key: str(value) for key, value in REQUEST.items()}


def _gateway(tmp_path, access: AccessGuard | None = None, **access_args):
    args = ServiceArgs(data_dir=str(tmp_path), access=access_args, **TEST_TIMINGS)
    return gateway_over(tmp_path, FakeGenerator(), args=args, access=access)


@pytest.fixture
def gateway(tmp_path):
    gateway = _gateway(tmp_path)
    yield gateway
    gateway.stores.jobs.close()


@pytest.fixture
def client(gateway):
    with api_client(gateway) as c:
        yield c


def _jobs(gateway) -> int:
    return len(gateway.stores.jobs.list(None, 100, "asc")[0])


def _error(response, status: int, code: str, param: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    return error["message"]


# --- DNS rebinding: the Host check ---------------------------------------------------------------


def test_a_rebound_name_reads_nothing_with_auth_off(client, gateway):
    video = client.post("/v1/videos", json=REQUEST).json()
    assert video["status"] == "completed"
    # evil.example now resolves to this machine; the page's requests carry its name.
    for path in (f"/v1/videos/{video['id']}", f"/v1/videos/{video['id']}/content", "/v1/videos", "/healthz", "/"):
        response = client.get(path, headers={"host": "evil.example:8000"})
        message = _error(response, 400, "untrusted_host", "Host")
        assert "evil.example:8000" in message and "access.allowed_hosts" in message
        assert video["id"] not in response.text


@pytest.mark.parametrize(
    "host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "app.localhost:8000", "testserver"]
)
def test_loopback_names_are_answered_as_make_run_needs(client, host):
    assert client.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_hosts_replace_the_default(tmp_path):
    gateway = _gateway(tmp_path, allowed_hosts=["video.example.com", "*.internal.example"])
    with api_client(gateway) as client:
        assert client.get("/healthz", headers={"host": "video.example.com"}).status_code == 200
        assert client.get("/healthz", headers={"host": "gw-1.internal.example:8000"}).status_code == 200
        _error(client.get("/healthz", headers={"host": "localhost"}), 400, "untrusted_host", "Host")
    gateway.stores.jobs.close()


def test_with_auth_on_any_host_is_answered_unless_listed(tmp_path):
    # A rebinding page cannot present a key, so with auth on the default lets every name in
    # (a production gateway behind its DNS name needs no setting); a list still applies.
    guard = AccessGuard(keyed_config(), {})
    gateway = _gateway(tmp_path, access=guard)
    with api_client(gateway) as client:
        assert client.get("/healthz", headers={"host": "video.example.com"}).status_code == 200
    gateway.stores.jobs.close()
    listed = _gateway(tmp_path / "listed", access=AccessGuard(keyed_config(allowed_hosts=["a.example"]), {}))
    with api_client(listed) as client:
        _error(client.get("/healthz", headers={"host": "b.example"}), 400, "untrusted_host", "Host")
    listed.stores.jobs.close()


# --- cross-site requests: the Origin check -------------------------------------------------------


def test_a_cross_site_form_post_starts_no_job(client, gateway):
    # What an HTML <form> on another site sends: no preflight for these content types.
    urlencoded = client.post("/v1/videos", data=FORM, headers={"origin": "https://evil.example"})
    _error(urlencoded, 403, "cross_origin_refused", "Origin")
    multipart = client.post("/v1/videos", data=FORM, files={"x": ("", b"")}, headers={"origin": "https://evil.example"})
    _error(multipart, 403, "cross_origin_refused", "Origin")
    text_plain = client.post(
        "/v1/videos", content=b"{}", headers={"origin": "null", "content-type": "text/plain"}
    )  # a sandboxed frame or a file:// page
    _error(text_plain, 403, "cross_origin_refused", "Origin")
    assert _jobs(gateway) == 0


def test_a_cross_site_post_is_refused_by_sec_fetch_site_alone(client, gateway):
    for site in ("cross-site", "same-site"):  # same-site: another port of localhost is another app
        response = client.post("/v1/videos", data=FORM, headers={"sec-fetch-site": site})
        _error(response, 403, "cross_origin_refused", "Origin")
    assert _jobs(gateway) == 0


def test_a_cross_site_cancel_or_delete_is_refused(client, gateway):
    video = client.post("/v1/videos", json=REQUEST, headers={"Prefer": "respond-async"}).json()
    evil = {"origin": "http://evil.example"}
    _error(client.post(f"/v1/videos/{video['id']}/cancel", headers=evil), 403, "cross_origin_refused", "Origin")
    _error(client.delete(f"/v1/videos/{video['id']}", headers=evil), 403, "cross_origin_refused", "Origin")
    assert gateway.stores.jobs.get(video["id"]).delete_requested is False


def test_the_services_own_page_sdks_and_trusted_origins_may_post(tmp_path):
    gateway = _gateway(tmp_path, trusted_origins=["https://app.example.com"])
    with api_client(gateway) as client:
        own_page = {"origin": "http://localhost:8000", "host": "localhost:8000", "sec-fetch-site": "same-origin"}
        assert client.post("/v1/videos", json=REQUEST, headers=own_page).status_code == 200
        # A proxy that ends TLS forwards the name without the port the page's origin left out.
        assert (
            client.post(
                "/v1/videos", json=REQUEST, headers={"origin": "https://localhost", "host": "localhost"}
            ).status_code
            == 200
        )
        assert client.post("/v1/videos", json=REQUEST).status_code == 200  # an SDK: no Origin at all
        assert client.post("/v1/videos", data=FORM).status_code == 200  # curl -F / -d
        trusted = {"origin": "https://app.example.com", "sec-fetch-site": "cross-site"}
        assert client.post("/v1/videos", json=REQUEST, headers=trusted).status_code == 200
        # Another port of the same host is another origin.
        other_port = {"origin": "http://localhost:3000", "host": "localhost:8000"}
        _error(client.post("/v1/videos", json=REQUEST, headers=other_port), 403, "cross_origin_refused", "Origin")
        # Reads are not refused for an Origin: without CORS headers the page cannot read them anyway.
        assert client.get("/v1/videos", headers={"origin": "https://evil.example"}).status_code == 200
    gateway.stores.jobs.close()


def test_a_cross_site_websocket_is_refused_before_it_opens(client):
    video = client.post("/v1/videos", json=REQUEST).json()
    path = f"/v1/videos/{video['id']}/ws"
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(path, headers={"origin": "https://evil.example"}):
            pass
    assert (refused.value.code, refused.value.reason) == (1008, "cross_origin_refused")
    with client.websocket_connect(path, headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json()["seq"] == 1  # its event log, from the start


def test_with_auth_on_a_foreign_origin_is_refused_even_with_a_key(tmp_path):
    gateway = _gateway(tmp_path, access=AccessGuard(keyed_config(), {}))
    with api_client(gateway) as client:
        headers = {"origin": "https://evil.example", "Authorization": f"Bearer {ALICE}"}
        _error(client.post("/v1/videos", json=REQUEST, headers=headers), 403, "cross_origin_refused", "Origin")
    gateway.stores.jobs.close()


@pytest.mark.parametrize(
    "field, value, quoted",
    [
        ("allowed_hosts", ["video.example.com:8000"], "video.example.com:8000"),
        ("allowed_hosts", ["a.*.example"], "a.*.example"),
        ("allowed_hosts", ["*example.com"], "*example.com"),
        ("allowed_hosts", ["::1"], "::1"),
        ("trusted_origins", ["https://app.example.com/"], "https://app.example.com/"),
        ("trusted_origins", ["app.example.com"], "app.example.com"),
    ],
)
def test_bad_host_and_origin_entries_fail_at_start_quoted(field, value, quoted):
    with pytest.raises(ValidationError, match=quoted.replace("*", r"\*").replace(".", r"\.")):
        AccessConfig(**{field: value})
