#!/usr/bin/env python3
"""A slow tlog client, for testing how tlogd sends when its peer stops reading.

record LISTEN_PORT SERVER_PORT FILE
    Proxies one connection from 127.0.0.1:LISTEN_PORT to 127.0.0.1:SERVER_PORT (e.g. `tlog
    bench --sink`) and saves the client's bytes (handshake, blocks, flush) to FILE.
replay FILE HOST PORT LAST_SEQUENCE
    Sends FILE to HOST:PORT in 700-byte writes, one per millisecond (TCP_NODELAY), with a 4 KiB
    receive buffer and without reading: tlogd's acks fill the small window, then pile up in its
    send buffer. Then reads every reply until 5 s of silence and checks that they hold
    LAST_SEQUENCE as a little-endian u64 (the last block's flushed ack; the range fields of
    Cap'n Proto's SequenceRange are plain u64 words). When the reading starts, tlogd sends the
    piled-up acks in segments as large as the window allows.
Every loop is bounded in time; exits 1 with a message on failure.
"""
import socket
import struct
import sys
import threading
import time


def record(listen_port, server_port, path):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(1)
    ls.settimeout(30)
    c, _ = ls.accept()
    s = socket.create_connection(("127.0.0.1", server_port), timeout=30)
    c.settimeout(30)

    def back():
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()

    t = threading.Thread(target=back, daemon=True)
    t.start()
    rec = bytearray()
    while True:
        d = c.recv(65536)
        if not d:
            break
        rec += d
        s.sendall(d)
    s.shutdown(socket.SHUT_WR)
    t.join(10)
    with open(path, "wb") as f:
        f.write(rec)
    print(f"slow-client: recorded {len(rec)} bytes")


def replay(path, host, port, last):
    data = open(path, "rb").read()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(30)
    s.connect((host, port))
    start = time.time()
    for i in range(0, len(data), 700):
        s.sendall(data[i:i + 700])
        time.sleep(0.001)
        if time.time() - start > 60:
            sys.exit("slow-client: sending took over 60 s")
    s.settimeout(5)
    replies = bytearray()
    try:
        while time.time() - start < 120:
            d = s.recv(65536)
            if not d:
                break
            replies += d
    except socket.timeout:
        pass
    s.close()
    if struct.pack("<Q", last) not in replies:
        sys.exit(f"slow-client: {len(replies)} bytes of replies hold no ack of sequence {last}")
    print(f"slow-client: sent {len(data)} bytes, read {len(replies)} bytes of replies, last ack present")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "record":
        record(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 6 and sys.argv[1] == "replay":
        replay(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(__doc__)
