"""A stdlib-only fake worker that misbehaves on purpose, for fakecoord's tests.

Run like a real worker (``--factory X --config-json JSON --connect-host H
--connect-port P``; the factory is ignored).  The config chooses the
misbehaviour: ``{"mode": MODE, "on": METHOD, ...}``; requests for other
methods get a valid canned answer, and ``on`` absent means every method.

Modes: ``ok``; ``echo`` (the result is the request itself); ``raw_result``
(the result is ``config["result_json"]`` spliced in verbatim, so it may hold
NaN); ``raw_frame`` (the whole frame body is ``config["body"]``); ``refuse`` (``ok: false``
with ``config["error"]``);
``wrong_id``; ``huge_header`` (announces a 1 TiB frame); ``zero_frame``;
``crash_before`` / ``crash_after`` (exit 3 before connecting / on the
request); ``hang`` (never answers); ``close_no_exit`` (closes the socket and
stays alive); ``no_connect`` (never connects); ``stubborn`` (acks shutdown,
ignores it and SIGTERM).  Every wait is bounded by ``LIFETIME`` seconds.
"""

import argparse
import json
import signal
import socket
import struct
import sys
import time

LIFETIME = 60.0

CANNED = {
    "hello": {"protocol_version": 2, "workload_name": "fake", "capabilities": []},
    "capability_probe": {
        "runtime_device": "fake",
        "capability": {
            "preferred_backends": [],
            "work_units_per_second": 1.0,
            "target_window_seconds": 1,
        },
    },
    "init_model": {"model_id": "m1"},
    "import_parameter_pack": {"model_id": "m1"},
    "train_window": {"metrics": {"loss": 1.0}},
    "evaluate": {"metrics": {"loss": 1.0}},
    "apply_patch": "Applied",
    "run_inner_loop": {"steps_completed": 1, "metrics": {}},
    "merge_candidate_models": {"model_id": None},
    "apply_single_root_ema": {"model_id": "m1"},
    "reconcile_canonical_model": {"model_id": "m1"},
}


def log(message):
    print(f"fake worker: {message}", file=sys.stderr, flush=True)


def linger():
    time.sleep(LIFETIME)
    sys.exit(0)


def recv_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def send_body(sock, body):
    sock.sendall(struct.pack(">Q", len(body)) + body)


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--factory", "--config-json", "--connect-host", "--connect-port"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    config = json.loads(args.config_json)
    mode = config.get("mode", "ok")
    target = config.get("on")

    if mode == "crash_before":
        log("cannot start: crash_before mode")
        sys.exit(3)
    if mode == "no_connect":
        log("not connecting")
        linger()
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    sock = socket.create_connection((args.connect_host, int(args.connect_port)), timeout=LIFETIME)
    while True:
        header = recv_exact(sock, 8)
        if header is None:
            sys.exit(0)
        body = recv_exact(sock, struct.unpack(">Q", header)[0])
        if body is None:
            sys.exit(1)
        request = json.loads(body)
        method, request_id = request["method"], request["id"]
        hit = target is None or method == target

        if hit and mode == "crash_after":
            log(f"crashing during {method}")
            sys.exit(3)
        if hit and mode == "hang":
            log(f"hanging on {method}")
            linger()
        if hit and mode == "close_no_exit":
            sock.close()
            linger()
        if hit and mode == "huge_header":
            sock.sendall(struct.pack(">Q", 1 << 40) + b"{")
            linger()
        if hit and mode == "zero_frame":
            sock.sendall(struct.pack(">Q", 0))
            continue
        if hit and mode == "raw_frame":
            send_body(sock, config["body"].encode("utf-8"))
            continue
        if hit and mode == "refuse":
            error = {"id": request_id, "ok": False, "error": config["error"]}
            send_body(sock, json.dumps(error).encode("utf-8"))
            continue
        if hit and mode == "raw_result":
            text = f'{{"id":{request_id},"ok":true,"result":{config["result_json"]}}}'
            send_body(sock, text.encode("utf-8"))
            continue

        response_id = request_id + 1 if hit and mode == "wrong_id" else request_id
        result = request if mode == "echo" else CANNED.get(method, {"ok": True})
        send_body(sock, json.dumps({"id": response_id, "ok": True, "result": result}).encode())
        if method == "shutdown":
            if mode == "stubborn":
                log("ignoring shutdown")
                linger()
            sys.exit(0)


if __name__ == "__main__":
    main()
