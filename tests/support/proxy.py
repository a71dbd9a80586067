"""A forward and CONNECT proxy on 127.0.0.1, and TLS for a loopback server, for tests.

The proxy forwards absolute-URI requests (http://) and tunnels CONNECT (https://), counts
both, can ask for a password (Proxy-Authorization, 407 otherwise) and reaches only
127.0.0.1. `serve_tls` puts a loopback server behind TLS with a certificate made on the spot,
for a client that trusts it through SSL_CERT_FILE.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import quote, urlsplit

from tests.support.loopback import QuietServer


@dataclass
class Proxy:
    auth: tuple[str, str] | None = None  # what Proxy-Authorization must carry
    forwarded: list[str] = field(default_factory=list)  # absolute URIs sent on
    tunnels: list[str] = field(default_factory=list)  # host:port CONNECTed to

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_CONNECT(self) -> None:
                owner._tunnel(self)

            def do_GET(self) -> None:
                owner._forward(self)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, login: str = "") -> str:
        """The proxy's URL, with `login` (user:password) in it when given."""
        return f"http://{login + '@' if login else ''}127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _allowed(self, handler: BaseHTTPRequestHandler) -> bool:
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        if handler.headers.get("Proxy-Authorization") == expected:
            return True
        handler.send_response(407)
        handler.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return False

    def _tunnel(self, handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        if not self._allowed(handler):
            return
        host, _, port = handler.path.rpartition(":")
        if host != "127.0.0.1":
            handler.send_error(403, "loopback only")
            return
        self.tunnels.append(handler.path)
        with socket.create_connection((host, int(port)), timeout=30) as upstream:
            handler.send_response(200, "Connection established")
            handler.end_headers()
            handler.wfile.flush()
            _pipe(handler.connection, upstream)

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        if not self._allowed(handler):
            return
        target = urlsplit(handler.path)
        if target.hostname != "127.0.0.1":
            handler.send_error(403, "loopback only")
            return
        self.forwarded.append(handler.path)
        headers = {k: v for k, v in handler.headers.items()
                   if not k.lower().startswith("proxy-") and k.lower() != "connection"}
        upstream = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request("GET", path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "content-length", "transfer-encoding"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def _pipe(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [one, other]
    while True:
        ready, _, _ = select.select(sockets, [], [], 30)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            (other if sock is one else one).sendall(data)


def serve_tls(server: QuietServer, folder: Path) -> Path:
    """Put `server` (already serving) behind TLS for 127.0.0.1; return the certificate's file,
    for SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpulock test index")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "index.pem", folder / "index.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return cert_file


def login(user: str, password: str) -> str:
    """user:password as a URL carries it."""
    return f"{quote(user, safe='')}:{quote(password, safe='')}"
