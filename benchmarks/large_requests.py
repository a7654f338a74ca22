"""Health probes while large requests are decoded: `GET /v2/health/live` latency (wrk,
one connection) while four clients keep 64 MiB requests in flight.

    make bench    # or: .venv/bin/python benchmarks/large_requests.py [--seconds 20]

The model takes a BYTES tensor and answers each element's length, so the server's work is
almost all decoding: a 64 MiB body in the binary tensor extension holds ~650,000 elements
of 100 bytes. The same health load alone, first, is the baseline. Results in
benchmarks/results/large_requests.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

MODEL = """
import torch

def build() -> torch.nn.Module:
    return torch.nn.Identity()
"""

HANDLER = """
import numpy as np
from torchport.runtime import Handler as Base

class Handler(Base):
    # Each element's length: the work is the request's decoding, not the model.
    def preprocess(self, inputs):
        return inputs["text"]

    def inference(self, texts):
        return np.array([len(t) for t in texts], dtype=np.int64)

    def postprocess(self, lengths):
        return {"length": lengths}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_package(work: Path) -> Path:
    import torchport

    (work / "model.py").write_text(MODEL)
    (work / "handler.py").write_text(HANDLER)
    out = work / "lengths.tpa"
    torchport.package(
        name="lengths",
        code=f"{work / 'model.py'}:build",
        handler=work / "handler.py",
        example={"text": np.array([b"hello", b"world!"], dtype=object)},
        signature={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "length", "datatype": "INT64", "shape": [-1]}],
        },
        runtime={"max_batch_size": 1},
        out=out,
    )
    return out


def large_body(size: int) -> tuple[bytes, dict[str, str]]:
    item = 100
    count = size // (item + 4)
    element = b"x" * item
    raw = (len(element).to_bytes(4, "little") + element) * count
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [count],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + raw, headers


def wrk_health(port: int, seconds: int) -> dict[str, float]:
    done = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/v2/health/live"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out: dict[str, float] = {}
    for label in ("50%", "90%", "99%"):
        found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", done.stdout, re.M)
        assert found, done.stdout
        value, unit = float(found.group(1)), found.group(2)
        out[f"p{label[:-1]}_ms"] = value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    out["health_per_s"] = float(rate.group(1)) if rate else 0.0
    return out


def senders(port: int, body: bytes, headers: dict[str, str], stop: threading.Event,
            answered: list[float]) -> list[threading.Thread]:  # fmt: skip
    def send() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("POST", "/v2/models/lengths/infer", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"large request answered {response.status}")
            answered.append(time.perf_counter() - started)

    return [threading.Thread(target=send, daemon=True) for _ in range(4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/large_requests.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = build_package(Path(tmp))
        http_port, mgmt = free_port(), free_port()
        env = {**os.environ, "TORCHPORT_TOKEN": "benchmark-token-0123456789",
               "TORCHPORT_MAX_REQUEST_BYTES": str((args.mib + 8) * MIB)}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchport", "serve", "--store", f"{tmp}/store",
             "--http-port", str(http_port), "--management-port", str(mgmt),
             "--grpc-port", str(free_port()), str(package)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            idle = wrk_health(http_port, max(5, args.seconds // 2))
            body, headers = large_body(args.mib * MIB)
            stop, answered = threading.Event(), []
            threads = senders(http_port, body, headers, stop, answered)
            for t in threads:
                t.start()
            time.sleep(2)  # all four in flight
            loaded = wrk_health(http_port, args.seconds)
            stop.set()
            for t in threads:
                t.join(300)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "body_mib": args.mib,
        "clients": 4,
        "health_idle": idle,
        "health_under_load": loaded,
        "large_requests_answered": len(answered),
        "large_request_median_s": float(np.median(answered)) if answered else None,
    }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
