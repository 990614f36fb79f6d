#!/usr/bin/env python3
"""A recording HTTP proxy that never connects anywhere (Python 3 stdlib only).

    python3 spec/support/connect_proxy.py PORT LOG_FILE READY_FILE

Listens on 127.0.0.1:PORT. For every connection it reads the request head,
appends the request line (`CONNECT sts.us-west-2.amazonaws.com:443 HTTP/1.1`,
or `GET http://host/path HTTP/1.1` for plain HTTP through HTTP_PROXY) to
LOG_FILE and answers `403 Forbidden`: a CONNECT is never tunnelled, so the
client gets a tunnel error and nothing leaves the machine. READY_FILE is
created once it listens. It exits at EOF on stdin (run it with
`io.popen(cmd, "w")` and close the pipe) or after 120 s.

credentials_spec.lua runs it (through connect_proxy.lua) inside a fresh
network namespace (`unshare -n`, loopback only) together with the process
under test, so even a client that ignored the proxy could not reach a real
AWS address.
"""

import socket
import sys
import threading


def main():
    port, log_path, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    lock = threading.Lock()

    def handle(conn):
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            with lock, open(log_path, "a") as f:
                f.write(line + "\n")
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def serve():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    open(ready, "w").close()
    done = threading.Event()

    def wait_stdin():
        try:
            sys.stdin.read()
        finally:
            done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    done.wait(120)


if __name__ == "__main__":
    main()
