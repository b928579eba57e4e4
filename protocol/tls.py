"""TLS contexts from PEM files, for a data center on another host (docs/cluster.md).

The token authenticates every frame but encrypts nothing; across a network the server
presents a certificate (`server_context`) and each edge trusts the CA that signed it
(`client_context`), verifying the host name or IP address it dials against the
certificate. Both refuse anything older than TLS 1.2. A missing or unreadable file is a
`UsageError` naming it, not a traceback from `ssl`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import UsageError


def _readable(path: str | Path, what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what}: no such file: {file}")
    return str(file)


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """The server's side: its certificate chain (PEM, leaf first) and private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(_readable(cert, "TLS certificate"), _readable(key, "TLS key"))
    except ssl.SSLError as exc:
        raise UsageError(f"TLS certificate {cert} / key {key} cannot be loaded: {exc}") from exc
    return context


def client_context(ca: str | Path) -> ssl.SSLContext:
    """The client's side: trust only the CA certificate(s) in `ca` (PEM), check the host name."""
    try:
        context = ssl.create_default_context(cafile=_readable(ca, "TLS CA"))
    except ssl.SSLError as exc:
        raise UsageError(f"TLS CA {ca} cannot be loaded: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
