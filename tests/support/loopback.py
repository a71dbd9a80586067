"""The HTTP plumbing the fake servers share: a threaded server on 127.0.0.1 per instance."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietServer(ThreadingHTTPServer):
    """A threaded server that takes a client hanging up (a killed sync) as normal."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class Loopback:
    """Serves every GET, HEAD and POST through `self._handle` once `serve()` has run, counting
    the connections clients opened (`connections`); `close()` ends the kept-alive ones too, so
    a closed server answers no client that pooled a connection to it."""

    httpd: QuietServer
    connections: int = 0

    def serve(self) -> None:
        owner = self
        counting = threading.Lock()
        self._open: set[socket.socket] = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with counting:
                    owner.connections += 1
                    owner._open.add(self.request)
                super().setup()

            def finish(self) -> None:
                with counting:
                    owner._open.discard(self.request)
                super().finish()

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._handle(self)

            def do_HEAD(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return self.origin

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError
