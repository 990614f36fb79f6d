#!/usr/bin/env python3
"""A hostile PostgreSQL server on 127.0.0.1: it accepts TLS with the
certificate it is given (self-signed, untrusted), asks for a cleartext
password, and records what it receives, as an attacker in the middle would.

    python3 fake_pg_tls.py PORT_FILE RECORD_FILE CERT KEY

Writes its port to PORT_FILE, appends every PasswordMessage it receives to
RECORD_FILE (one line each, as received), and serves until its stdin is
closed.
"""
import os
import socket
import ssl
import struct
import sys
import threading


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def handle(raw, context, record):
    try:
        raw.settimeout(10)
        length, code = struct.unpack("!II", read_exact(raw, 8))
        if code == 80877103:  # SSLRequest
            raw.sendall(b"S")
            conn = context.wrap_socket(raw, server_side=True)
            length, code = struct.unpack("!II", read_exact(conn, 8))
        else:
            conn = raw
        read_exact(conn, length - 8)  # the startup message
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = read_exact(conn, 1)
        (n,) = struct.unpack("!I", read_exact(conn, 4))
        body = read_exact(conn, n - 4)
        if kind == b"p":
            with open(record, "ab") as f:
                f.write(body.rstrip(b"\0") + b"\n")
        error = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        conn.sendall(b"E" + struct.pack("!I", len(error) + 4) + error)
    except (OSError, EOFError, ssl.SSLError, struct.error):
        pass
    finally:
        try:
            raw.close()
        except OSError:
            pass


def main():
    port_file, record, cert, key = sys.argv[1:5]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(raw, context, record), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(tmp, port_file)
    sys.stdin.read()
    listener.close()


if __name__ == "__main__":
    main()
