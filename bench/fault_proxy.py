"""A TCP proxy that can go silent or slow on command: a partition or a slow link, on loopback.

    proxy = FaultProxy("127.0.0.1", redis_port).start()
    client = redis.Redis(port=proxy.port)
    proxy.blackhole()   # connections stay open, nothing gets through (a partition, a failover)
    proxy.slow(0.2)     # every chunk waits 0.2 s before it is passed on (latency, not loss)
    proxy.heal()        # back to passing bytes straight through

A blackhole holds bytes instead of dropping them, as TCP would: a peer's
retransmissions deliver them once the partition heals. New connections are
accepted during a blackhole (a SYN to a live host answers) and then hear nothing.
The soak (bench/soak.py) puts Redis and S3 behind one each.
"""

from __future__ import annotations

import asyncio
import threading

CHUNK = 65536


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()  # set: bytes flow; clear: blackhole
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        self._loop.call_soon_threadsafe(self._open.clear)

    def heal(self) -> None:
        self.delay_s = 0.0
        self._loop.call_soon_threadsafe(self._open.set)

    def slow(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._loop.call_soon_threadsafe(self._open.set)

    def stop(self) -> None:
        """Close the listener and every connection through it, then the proxy's loop."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._open.wait()  # a connection made during a blackhole hears nothing until it heals
            server_reader, server_writer = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(
                    self._pipe(client_reader, server_writer, delayed=True),
                    self._pipe(server_reader, client_writer, delayed=False),
                )
            finally:
                server_writer.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            client_writer.close()
            self._connections.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                await self._open.wait()
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
