"""TLS for gRPC between coordinators and workers (stdlib ssl contexts).

Each process has one identity (`--tls-cert`, `--tls-key`) and one trust anchor
(`--tls-ca`). With all three, TLS is mutual: the coordinator accepts only workers whose
certificate the CA signed, and workers accept only such a coordinator. Peers are dialled
by the address they advertise, so certificates must name it (an IP address SAN for IPs).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    ca: str | None = None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    if files.ca:
        context.load_verify_locations(files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
    context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(["h2"])
    return context
