"""A recording TCP relay for the fuzz seed corpus: listens on a port, relays every
connection to Redis, and writes what each connection sent and received to
<out>/<n>.requests and <n>.replies (the first 256 KiB of each direction).

Usage: python3 record.py <listen port> <redis port> <out dir>"""
import os
import socket
import sys
import threading

listen_port, redis_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
KEEP = 256 * 1024
os.makedirs(out, exist_ok=True)
counter = iter(range(1_000_000))
lock = threading.Lock()


def pump(src, dst, path):
    kept = 0
    with open(path, "wb") as f:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if kept < KEEP:
                f.write(data[: KEEP - kept])
                kept += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(client):
    with lock:
        n = next(counter)
    upstream = socket.create_connection(("127.0.0.1", redis_port))
    base = os.path.join(out, f"{n:04d}")
    threading.Thread(target=pump, args=(client, upstream, base + ".requests"), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client, base + ".replies"), daemon=True).start()


server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen_port))
server.listen(512)
print("recording", flush=True)
while True:
    conn, _ = server.accept()
    serve(conn)
