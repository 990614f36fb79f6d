#!/usr/bin/env python3
"""A TCP forwarder on 127.0.0.1, standing in for a tunnel (SSH, SSM port
forwarding) or a load balancer in front of the database.

    python3 tcp_forward.py PORT_FILE TARGET_HOST TARGET_PORT [COUNT_FILE]

Listens on a free port of 127.0.0.1, writes it to PORT_FILE, and forwards
every connection to TARGET_HOST:TARGET_PORT until its stdin is closed
(spec/support/tcp_forward.lua opens it with io.popen(cmd, "w")). With
COUNT_FILE, each connection it accepts appends a line there first, so a
spec can count the connections a client dialled.
"""
import os
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listener, target, count_file):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        if count_file:
            with open(count_file, "a") as f:
                f.write("accepted\n")
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def main():
    port_file, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count_file = sys.argv[4] if len(sys.argv) > 4 else None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(tmp, port_file)
    threading.Thread(target=serve, args=(listener, (host, port), count_file), daemon=True).start()
    sys.stdin.read()  # until the spec closes our stdin
    listener.close()


if __name__ == "__main__":
    main()
