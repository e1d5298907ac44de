"""S3 for tests: a real moto server on loopback, clients for it, and latency on demand.

`S3Latency` holds every request of one boto3 client at botocore's `before-send`
(after signing, before the bytes leave) while it is closed: S3 as slow as a test
wants, for as long as it wants, with no sleep. `held` is set once a request is
parked there, so a test acts while it is known to be stuck; `open()` lets it
(and every later one) go. A hold that nobody opens ends by itself after
`give_up_s` and sets `gave_up`: then whatever the test did "meanwhile" in fact
waited for the hold to end (the symptom of blocking I/O on an event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    """A client of `endpoint` with explicit test credentials: nothing read from the environment."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


class S3Latency:
    def __init__(self, client: Any, give_up_s: float = 5.0) -> None:
        self.give_up_s = give_up_s
        self.held = threading.Event()
        self.gave_up = False
        self.operations: list[str] = []  # of the requests held, in order
        self._open = threading.Event()
        self._open.set()
        client.meta.events.register("before-send.s3.*", self._before_send)

    def close(self) -> None:
        """Hold every request from now on, until `open()`."""
        self.held.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def _before_send(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        if self._open.is_set():
            return None
        self.operations.append(event_name.rsplit(".", 1)[-1])
        self.held.set()
        if not self._open.wait(self.give_up_s):
            self.gave_up = True
        return None  # None: botocore goes on and sends the request
