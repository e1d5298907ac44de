"""A real `redis-server` for tests, on a free local port.

Tests run against the real binary rather than a fake, because the store's
atomicity rests on Redis running Lua scripts as one step. Without the binary
the tests fail (not skip): a silently skipped backend is an untested one.

`RedisServer` can be stopped and started again on the same port, which is how
a test makes "Redis restarted" happen under a live client.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.01


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_pid(port: int) -> int | None:
    """The pid of the redis-server answering on `port`, or None if none answers.

    The pid, not just a PONG: a server left on the port by someone else
    answers PING too, while ours has already exited on "address in use".
    """
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return int(client.info("server")["process_id"])
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    finally:
        client.close()


class _ExitedEarly(Exception):
    pass


class RedisServer:
    """One redis-server process; `start()` after `stop()` reuses the port.

    `appendonly=True` keeps data across a restart (an fsync'd AOF in `dir`);
    the default keeps nothing, like a cache that was restarted.
    """

    def __init__(self, dir: Path, *, port: int | None = None, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found on PATH: install redis-server (apt-get install -y redis-server)")
        self.binary = binary
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        # A port found free may be taken before redis binds it; only a port we
        # picked, and only before the first start, may be swapped for another.
        self._may_repick_port = port is None
        self.appendonly = appendonly
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        for _ in range(3 if self._may_repick_port else 1):
            try:
                url = self._start_once()
            except _ExitedEarly:
                self.port = _free_port()
                continue
            self._may_repick_port = False
            return url
        raise RuntimeError(f"redis-server exited at start on 3 ports; last log in {self.dir}")

    def _start_once(self) -> str:
        log = self.dir / f"redis-{self.port}.log"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.dir),
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while _server_pid(self.port) != self._proc.pid:
            exited = self._proc.poll() is not None
            if exited and self._may_repick_port:
                self.stop()
                raise _ExitedEarly
            if exited or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(
                    f"redis-server exited or did not answer on port {self.port} "
                    f"within {START_TIMEOUT_S} s; log tail:\n{tail}"
                )
            time.sleep(POLL_INTERVAL_S)
        return self.url

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_redis_server(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start a throwaway server; returns (url, stop)."""
    server = RedisServer(tmp_dir)
    return server.start(), server.stop


def emptied_db_url(server: RedisServer, db: int) -> str:
    """The URL of database `db` of `server`, emptied: a test module's own corner of the
    session's redis-server, clean for each test."""
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url
