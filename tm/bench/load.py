"""A lean HTTP/1.1 load generator for the benchmark.

httpx costs more CPU per request than the server under test on a 2-core machine, which
would make the benchmark measure the client. This keeps one keep-alive connection per
concurrent client, writes prebuilt requests and parses only the status line and
Content-Length of the answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def build_request(method: str, host: str, path: str, body: bytes) -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Read one response from `stream` (leftovers stay in `buffer`); returns its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    while len(buffer) < end + length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    del buffer[: end + length]
    return status


async def run_load(host: str, port: int, request: bytes, *, concurrency: int,
                   seconds: float, expect: int) -> LoadResult:
    """`concurrency` connections each sending `request` back to back for `seconds`."""
    result = LoadResult()
    deadline = trio.current_time() + seconds

    async def client() -> None:
        stream = await trio.open_tcp_stream(host, port)
        buffer = bytearray()
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(request)
                if await _read_response(stream, buffer) == expect:
                    result.ok += 1
                else:
                    result.errors += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    result.elapsed_s = trio.current_time() - start
    return result
