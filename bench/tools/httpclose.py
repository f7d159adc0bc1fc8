"""Fallback for httpclose.c where no C compiler is installed: the same behaviour, slower.

    python bench/tools/httpclose.py PORT [WORKERS]

Accept, read once, answer a fixed "200 OK, Connection: close" if a request came, close. WORKERS
processes share the listening socket. Prints "ready" once it listens. The data-path benchmark
records which server it used, because this one caps the connection rate far below the C one.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok\n"


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        with conn:
            try:
                if conn.recv(4096):
                    conn.sendall(RESPONSE)
            except OSError:
                pass


def main() -> None:
    port = int(sys.argv[1])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    print("ready", flush=True)
    for _ in range(workers - 1):
        if os.fork() == 0:
            # Die with the parent, like the C version (the lab stops the whole process group anyway).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            break
    serve(listener)


if __name__ == "__main__":
    main()
