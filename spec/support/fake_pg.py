#!/usr/bin/env python3
"""A fake PostgreSQL server that asks for one authentication method and
records what the client answers (Python 3 stdlib only).

    python3 spec/support/fake_pg.py AUTH LOG_FILE READY_FILE

AUTH is `cleartext` (AuthenticationCleartextPassword), `md5`
(AuthenticationMD5Password) or `scram` (AuthenticationSASL offering
SCRAM-SHA-256). Listens on a free 127.0.0.1 port and writes it to READY_FILE
once it listens. An SSLRequest is answered 'N'. After the startup message it
sends the request, then reads whatever the client sends until it closes (or
3 s pass) and appends one line to LOG_FILE: the hex of those bytes (empty:
the client sent nothing). Then it closes the connection. It exits at EOF on
stdin (run it with `io.popen(cmd, "w")` and close the pipe) or after 120 s.
"""

import os
import socket
import struct
import sys
import threading

SSL_REQUEST = 80877103
REQUESTS = {
    "cleartext": b"R" + struct.pack("!ii", 8, 3),
    "md5": b"R" + struct.pack("!ii", 12, 5) + b"salt",
    "scram": b"R" + struct.pack("!ii", 4 + 4 + 15, 10) + b"SCRAM-SHA-256\0\0",
}


def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def handle(conn, request, log_path, lock):
    received = b""
    try:
        conn.settimeout(3)
        while True:
            (length,) = struct.unpack("!i", read_exactly(conn, 4))
            body = read_exactly(conn, length - 4)
            if struct.unpack("!i", body[:4])[0] == SSL_REQUEST:
                conn.sendall(b"N")
                continue
            break
        conn.sendall(request)
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
    except (OSError, EOFError):
        pass
    finally:
        with lock, open(log_path, "a") as f:
            f.write(received.hex() + "\n")
        conn.close()


def main():
    auth, log_path, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    request = REQUESTS[auth]
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    lock = threading.Lock()

    def serve():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handle, args=(conn, request, log_path, lock), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with open(ready + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(ready + ".tmp", ready)
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
