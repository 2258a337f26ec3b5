"""Every outbound byte GDAL fetches goes through here: a loopback proxy that checks each hop.

GDAL (libcurl) follows HTTP redirects by itself and has no option to stop it, so a COG on an
allowlisted host could answer 302 → ``http://169.254.169.254/…`` and GDAL would fetch it. Setting
``GDAL_HTTP_PROXY`` to this proxy makes curl ask *us* for every connection — the first request,
each redirect hop, S3 region redirects — and a host outside the policy gets 403 before a byte
leaves the machine. HTTPS goes through as ``CONNECT host:port`` (the tunnel stays end-to-end
TLS); plain HTTP is forwarded one request per connection, so a kept-alive connection cannot be
reused to reach a second host.

One proxy per policy (allowlist), started on first use and kept for the process's life.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import selectors
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from dinotiles.core.errors import DinotilesError

logger = logging.getLogger("dinotiles.egress")
MAX_HEADER_BYTES = 65536
MAX_CONNECTIONS = 128  # concurrent connections through one proxy; more are refused (503)
Policy = Callable[[str, int], bool]
_REFUSALS: deque[tuple[float, str]] = deque(maxlen=256)  # (monotonic time, host:port) of every refused hop


class EgressUnsafe(DinotilesError):
    """The environment would let GDAL bypass the egress guard (the server refuses to start)."""


def check_environment() -> None:
    """libcurl skips any proxy for hosts in NO_PROXY: with it set, a redirect could leave the allowlist."""
    bypass = [name for name in ("NO_PROXY", "no_proxy") if os.environ.get(name)]
    if bypass:
        raise EgressUnsafe(
            f"{'/'.join(bypass)} is set: libcurl would let GDAL bypass dinotiles' egress guard for those hosts; "
            "unset it for the server process (its remote reads are already limited to the allowlists)"
        )


def refused_since(started: float) -> list[str]:
    """Hosts the proxy refused since ``started``: why a GDAL read that failed oddly failed."""
    return sorted({host for when, host in list(_REFUSALS) if when >= started})


class _Handler(socketserver.StreamRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            self._answer(503, "egress proxy busy")
            return
        try:
            self._handle()
        finally:
            self.server.slots.release()

    def _handle(self) -> None:
        self.connection.settimeout(self.server.timeout_s)
        self.deadline = time.monotonic() + self.server.total_s
        try:
            head = self._read_head()
        except (OSError, ValueError):
            return
        if head is None:
            return
        request_line, header_lines = head
        # only this process may use the proxy: GDAL sends the per-process token (GDAL_HTTP_PROXYUSERPWD)
        if not any(
            h.lower().startswith("proxy-authorization:") and h.split(":", 1)[1].strip() == self.server.auth
            for h in header_lines
        ):
            self._answer(407, "proxy authentication required", 'Proxy-Authenticate: Basic realm="dinotiles"\r\n')
            return
        try:
            method, target, version = request_line.split(" ", 2)
        except ValueError:
            self._answer(400, "malformed request line")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            if host.startswith("["):
                host = host[1:-1] if host.endswith("]") else ""
            if not host or (":" in host and not target.startswith("[")) or not port_text.isdigit():
                self._answer(400, "CONNECT needs host:port")
                return
            port = int(port_text)
            if not 0 < port < 65536:
                self._answer(400, "bad port")
                return
            self._tunnel(host, port)
            return
        parts = urlsplit(target)
        if parts.scheme.lower() != "http" or not parts.hostname:
            self._answer(400, "only absolute http:// targets and CONNECT are proxied")
            return
        try:
            port = parts.port or 80
        except ValueError:
            self._answer(400, "bad port")
            return
        origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        dropped = ("proxy-", "connection:", "keep-alive:", "host:")
        kept = [h for h in header_lines if not h.lower().startswith(dropped)]
        host_header = f"Host: {parts.hostname}" + (f":{parts.port}" if parts.port else "")  # never the caller's Host
        forward = (
            f"{method} {origin} {version}\r\n{host_header}\r\n"
            + "".join(f"{h}\r\n" for h in kept)
            + "Connection: close\r\n\r\n"
        )
        self._forward(parts.hostname, port, forward.encode("latin-1"))

    def _read_head(self) -> tuple[str, list[str]] | None:
        lines: list[str] = []
        total = 0
        while True:
            raw = self.rfile.readline(MAX_HEADER_BYTES + 1)
            total += len(raw)
            if not raw or total > MAX_HEADER_BYTES:
                return None
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                break
            lines.append(line)
        return (lines[0], lines[1:]) if lines else None

    def _answer(self, code: int, reason: str, extra: str = "") -> None:
        body = reason.encode()
        head = f"HTTP/1.1 {code} {reason}\r\n{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(OSError):
            self.wfile.write(head.encode() + body)

    def _upstream(self, host: str, port: int) -> socket.socket | None:
        if not self.server.policy(host.lower(), port):
            _REFUSALS.append((time.monotonic(), f"{host}:{port}"))
            logger.warning(
                "egress refused: %s:%s is not allowed (redirect or indirection off the allowlist)", host, port
            )
            self._answer(403, f"{host}:{port} is not allowed")
            return None
        try:
            sock = socket.create_connection((host, port), timeout=self.server.connect_timeout_s)
        except OSError as exc:
            self._answer(502, f"cannot connect to {host}:{port}: {exc}")
            return None
        sock.settimeout(self.server.timeout_s)
        return sock

    def _tunnel(self, host: str, port: int) -> None:
        upstream = self._upstream(host, port)
        if upstream is None:
            return
        with upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            self._pump(upstream, both_ways=True)

    def _forward(self, host: str, port: int, head: bytes) -> None:
        upstream = self._upstream(host, port)
        if upstream is None:
            return
        with upstream:
            upstream.sendall(head)
            self._pump(upstream, both_ways=False)

    def _pump(self, upstream: socket.socket, both_ways: bool) -> None:
        """Copy bytes until either side closes or nothing moves for the read timeout."""
        client = self.connection  # curl sends nothing after CONNECT until our 200, so nothing sits in rfile
        selector = selectors.DefaultSelector()
        selector.register(upstream, selectors.EVENT_READ, client)
        if both_ways:
            selector.register(client, selectors.EVENT_READ, upstream)
        try:
            while time.monotonic() < self.deadline:
                ready = selector.select(timeout=self.server.timeout_s)
                if not ready:
                    return
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    request_queue_size = 128

    def __init__(self, policy: Policy, timeout_s: float, connect_timeout_s: float) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.total_s = 30 * timeout_s  # no connection lives longer, however it trickles
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.user = "dinotiles:" + secrets.token_urlsafe(24)  # GDAL_HTTP_PROXYUSERPWD
        self.auth = "Basic " + base64.b64encode(self.user.encode()).decode()
        super().__init__(("127.0.0.1", 0), _Handler)


_PROXIES: dict[tuple[object, ...], _ProxyServer] = {}
_LOCK = threading.Lock()


def egress_proxy(key: tuple[object, ...], policy: Policy, timeout_s: float, connect_timeout_s: float) -> _ProxyServer:
    """The running proxy for this policy (``key`` names it), started on first use."""
    check_environment()
    with _LOCK:
        server = _PROXIES.get(key)
        if server is None:
            server = _ProxyServer(policy, timeout_s, connect_timeout_s)
            threading.Thread(target=server.serve_forever, name="dinotiles-egress", daemon=True).start()
            _PROXIES[key] = server
        return server
