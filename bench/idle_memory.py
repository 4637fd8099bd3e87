#!/usr/bin/env python3
"""Memory per idle connection of the reference server: RSS delta / N after N clients reach `ready`.

    cargo build --release -p sockeye-server
    python3 bench/idle_memory.py [N]        (default 2000; stays on loopback)

Starts target/release/sockeye-server on a free port, opens N raw WebSocket connections (stdlib only: a hand-written
upgrade; each waits for the server's `ready` text frame), then reads the server's VmRSS from /proc.
"""
import base64
import os
import re
import socket
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/sockeye-server")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sockeye.v1\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"ready" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed before ready")
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data[:40]
    return s


def main():
    server = subprocess.Popen(
        [BIN, "--addr", "127.0.0.1:0", "--heartbeat-ms", "0", "--drain-window-ms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(re.search(r":(\d+)$", server.stdout.readline().strip()).group(1))
        conns = [connect(port)]  # warm up allocator and runtime before the baseline
        time.sleep(0.5)
        base = rss_kb(server.pid)
        conns += [connect(port) for _ in range(N)]
        time.sleep(1)
        after = rss_kb(server.pid)
        per = (after - base) * 1024 / N
        print(f"sockeye-server idle connections: {N}, RSS {base} kB -> {after} kB, {per / 1000:.1f} KB per connection")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
