"""HTTP plumbing: one threaded server per service on 127.0.0.1:0.

A service object has `name`, `world` and `handle(Request) -> Reply | REFUSE`;
the handler reads the request, calls it, and sends the reply (or resets the
connection for REFUSE).
"""

import json
import socket
import struct
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCALHOST = "127.0.0.1"


def json_bytes(obj, indent=None):
    return json.dumps(obj, indent=indent).encode()


class Request:
    """A parsed HTTP request handed to services."""

    def __init__(self, handler, body):
        split = urllib.parse.urlsplit(handler.path)
        self.method = handler.command
        self.path = split.path
        self.query = split.query
        self.raw_path = handler.path
        self.headers = handler.headers
        self.body = body
        self.params = {}

    def header(self, name):
        return self.headers.get(name)

    def header_dict(self):
        out = {}
        for k, v in self.headers.items():
            k = k.lower()
            out[k] = out[k] + ", " + v if k in out else v
        return out


class Reply:
    """Response; `after` (optional) is called once it has been sent."""

    def __init__(self, status, body=b"", content_type="text/plain", headers=None):
        self.after = None
        self.status = status
        self.body = body if isinstance(body, bytes) else body.encode()
        self.headers = {"Content-Type": content_type}
        self.headers.update(headers or {})


REFUSE = object()   # handle() returns this to drop the connection


class FakeServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1:0 bound to one service object."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service):
        self.service = service
        self.aborted = set()
        super().__init__((LOCALHOST, 0), Handler)

    @property
    def port(self):
        return self.server_address[1]

    def shutdown_request(self, request):
        """Refused connections are reset (RST), not shut down gracefully."""
        if request in self.aborted:
            self.aborted.discard(request)
            request.close()
        else:
            super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "FakeAWS/1.0"

    def do_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        try:
            reply = self.server.service.handle(Request(self, body))
        except Exception as err:  # keep serving; report as 500
            print("fake_aws: handler error: %r" % (err,), file=sys.stderr, flush=True)
            reply = Reply(500, "internal error in fake: %r\n" % (err,))
        if reply is REFUSE:
            self.refuse()
            return
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # client went away (e.g. timed out)
        if reply.after:
            reply.after()

    do_GET = do_PUT = do_POST = do_DELETE = do_any

    def refuse(self):
        """Drop the connection without an answer: RST via SO_LINGER 0."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.aborted.add(self.connection)

    def log_message(self, fmt, *args):
        if self.server.service.world.args.verbose:
            sys.stderr.write("fake_aws %s: %s\n" % (self.server.service.name, fmt % args))
