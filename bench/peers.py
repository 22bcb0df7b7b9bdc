"""The limits the RPC benchmark measures the worker against, run as child processes.

``python -m bench.peers raw --port P --hello-result JSON --count N`` connects to
P and answers its k-th request with the k-th of N precomputed hello response
frames: a raw Python socket ping-pong of the same frames, no JSON at all.

``python -m bench.peers json --port P --hello-result JSON`` decodes every
request with ``json.loads`` and answers with ``json.dumps`` (``hello`` with the
given result, ``train_window`` with ``{"metrics": {"batches": len(batches)}}``,
anything else with ``{"ok": true}``): the stdlib-json floor.  Neither imports
torch, so neither pays for a torch-sized heap.

Both read through the same 64 KiB buffered socket reader as the worker, set
TCP_NODELAY, and exit 0 at EOF on a frame boundary.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
from collections.abc import Sequence
from typing import BinaryIO

HEADER = struct.Struct(">Q")


def encode(message: object) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(body)) + body


def serve_raw(sock: socket.socket, reader: BinaryIO, hello_result: object, count: int) -> int:
    frames = [encode({"id": i, "ok": True, "result": hello_result}) for i in range(1, count + 1)]
    read = reader.read
    for answer in frames:
        header = read(8)
        if len(header) < 8:
            return 0 if not header else 1
        (length,) = HEADER.unpack(header)
        if len(read(length)) < length:
            return 1
        sock.sendall(answer)
    print(f"bench.peers raw: more than {count} requests", file=sys.stderr)
    return 1


def serve_json(sock: socket.socket, reader: BinaryIO, hello_result: object) -> int:
    read = reader.read
    while True:
        header = read(8)
        if len(header) < 8:
            return 0 if not header else 1
        (length,) = HEADER.unpack(header)
        body = read(length)
        if len(body) < length:
            return 1
        request = json.loads(body)
        method = request["method"]
        if method == "hello":
            result = hello_result
        elif method == "train_window":
            result = {"metrics": {"batches": len(request["params"]["batches"])}}
        else:
            result = {"ok": True}
        out = json.dumps({"id": request["id"], "ok": True, "result": result}).encode("utf-8")
        sock.sendall(HEADER.pack(len(out)) + out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("mode", choices=("raw", "json"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hello-result", required=True, help="JSON of the hello result")
    parser.add_argument("--count", type=int, default=100_000, help="raw: frames to precompute")
    args = parser.parse_args(argv)
    hello_result = json.loads(args.hello_result)
    with socket.create_connection(("127.0.0.1", args.port), timeout=30) as sock:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock.makefile("rb", buffering=1 << 16) as reader:
            if args.mode == "raw":
                return serve_raw(sock, reader, hello_result, args.count)
            return serve_json(sock, reader, hello_result)


if __name__ == "__main__":
    sys.exit(main())
