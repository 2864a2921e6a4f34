"""HOST:PORT addresses as given on command lines and advertised by workers."""

from __future__ import annotations


def split_address(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'host:port', '[::1]:port' or ':port' -> (host, port). ValueError names the problem."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"address must look like HOST:PORT, got {address!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {address!r}")
    host = host.strip("[]") or default_host
    return host, port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
