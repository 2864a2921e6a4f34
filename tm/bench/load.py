"""A lean HTTP/1.1 load generator for the benchmark.

httpx costs more CPU per request than the server under test on a 2-core machine, which
would make the benchmark measure the client. This keeps one keep-alive connection per
concurrent client, writes prebuilt requests and parses only the status line and the
Content-Length and Connection headers of the answers. A connection the server closes (a
`Connection: close` answer, e.g. after hypercorn's 1,000 requests per connection) is
opened again; a request that got no answer on it is sent once more on the new one.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import httpx
import trio


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


@dataclass(frozen=True)
class Target:
    """Where the requests go: host, port, TLS, the base URL's path and extra headers."""

    host: str
    port: int
    tls: bool = False
    prefix: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(cls, url: str, token: str | None = None) -> Target:
        parsed = httpx.URL(url)
        tls = parsed.scheme == "https"
        headers = (("Authorization", f"Bearer {token}"),) if token else ()
        return cls(
            host=parsed.host,
            port=parsed.port or (443 if tls else 80),
            tls=tls,
            prefix=parsed.path.rstrip("/"),
            headers=headers,
        )

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        return build_request(method, self.netloc, self.prefix + path, body, self.headers)

    async def connect(self) -> trio.abc.Stream:
        if self.tls:
            return await trio.open_ssl_over_tcp_stream(
                self.host, self.port, ssl_context=ssl.create_default_context(),
                https_compatible=True,
            )
        return await trio.open_tcp_stream(self.host, self.port)


def build_request(method: str, host: str, path: str, body: bytes,
                  headers: Iterable[tuple[str, str]] = ()) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class ConnectionClosed(ConnectionError):
    """The server closed the connection before (the whole of) an answer."""


async def _read_response(stream: trio.abc.Stream, buffer: bytearray) -> tuple[int, bool]:
    """Read one response from `stream` (leftovers stay in `buffer`).

    Returns its status and whether the server will close the connection after it.
    """
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionClosed("server closed the connection")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    close = False
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    while len(buffer) < end + length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionClosed("server closed the connection")
        buffer += chunk
    del buffer[: end + length]
    return status, close


async def _client(target: Target, requests: Iterator[bytes], ok: frozenset[int],
                  result: LoadResult, deadline: float,
                  on_answer: Callable[[int], None] | None) -> None:
    """Send requests from the shared iterator one at a time until it ends or `deadline`."""
    stream: trio.abc.Stream | None = None
    buffer = bytearray()
    try:
        for request in requests:
            if trio.current_time() >= deadline:
                break
            for attempt in (1, 2):
                if stream is None:
                    stream = await target.connect()
                    buffer.clear()
                try:
                    await stream.send_all(request)
                    status, close = await _read_response(stream, buffer)
                except (ConnectionClosed, trio.BrokenResourceError):
                    # A keep-alive connection the server had already closed: open another.
                    await stream.aclose()
                    stream = None
                    if attempt == 2:
                        raise
                    continue
                if status in ok:
                    result.ok += 1
                else:
                    result.errors += 1
                if on_answer is not None:
                    on_answer(result.ok + result.errors)
                if close:
                    await stream.aclose()
                    stream = None
                break
    finally:
        if stream is not None:
            await stream.aclose()


async def run_load(target: Target, request: bytes, *, concurrency: int,
                   seconds: float, expect: int) -> LoadResult:
    """`concurrency` connections each sending `request` back to back for `seconds`."""

    def forever() -> Iterator[bytes]:
        while True:
            yield request

    return await run_requests(target, forever(), concurrency=concurrency,
                              ok=frozenset({expect}), seconds=seconds)


async def run_requests(target: Target, requests: Iterable[bytes], *, concurrency: int,
                       ok: frozenset[int], seconds: float = float("inf"),
                       on_answer: Callable[[int], None] | None = None) -> LoadResult:
    """Send every request of `requests` (or until `seconds` pass) over `concurrency`
    keep-alive connections; answers with a status in `ok` count as ok, others as errors.
    `on_answer` is called with the number of answers so far after each one."""
    result = LoadResult()
    start = trio.current_time()
    shared = iter(requests)
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(_client, target, shared, ok, result, start + seconds, on_answer)
    result.elapsed_s = trio.current_time() - start
    return result
