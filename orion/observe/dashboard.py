"""The head's web dashboard: one static page plus ``/api/state``, which it polls.

Served by the standard library's ``ThreadingHTTPServer`` in a daemon thread;
each request reads the head's state under its lock (``HeadView``). Off by
default; binds loopback unless told otherwise (``--dashboard-host``).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("orion.dashboard")

PAGE = Path(__file__).resolve().parent / "static" / "dashboard.html"


class _Handler(BaseHTTPRequestHandler):
    view = None  # set on the subclass made per server
    page = b""
    server_version = "orion-dashboard"

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._reply(200, "text/html; charset=utf-8", self.page)
        elif path == "/api/state":
            try:
                body = json.dumps(self.view.dashboard_state(), default=str).encode()
            except Exception as exc:  # never take the thread down; say what happened
                log.exception("dashboard state failed")
                self._reply(500, "application/json", json.dumps({"error": repr(exc)}).encode())
                return
            self._reply(200, "application/json", body)
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found\n")

    def _reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class DashboardServer:
    def __init__(self, view, port, host="127.0.0.1"):
        handler = type("DashboardHandler", (_Handler,), {"view": view, "page": PAGE.read_bytes()})
        server_class = _Server6 if ":" in host else _Server
        self._httpd = server_class((host, port), handler)
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="orion-dashboard", daemon=True)
        self._thread.start()

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
