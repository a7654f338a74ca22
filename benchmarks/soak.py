"""A soak: a real server under mixed REST and gRPC load for minutes, with uploads, promotes,
rollbacks and deletes in between; every request must be answered 200, or a documented
503/504 (a version switching, a queue full), and the server's memory and open files must
not grow without bound.

    make soak    # or: .venv/bin/python benchmarks/soak.py [--minutes 10]

Reports the requests by outcome, the management operations done, and the server's RSS and
open file descriptors (with its worker processes) after warm-up and at the end; results in
benchmarks/results/soak.json. Exits non-zero if any request failed otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from torchport.examples import build_examples  # noqa: E402
from torchport.transports.grpc.convert import pb, stub  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
ALLOWED = {200, 503, 504}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = collections.defaultdict(list)
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children[parent].append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children[p])
    return tree


def footprint(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file descriptors of the server and its worker processes."""
    rss, fds = 0.0, 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, StopIteration):
            continue
    return {"rss_mib": round(rss / 1024, 1), "open_fds": fds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_examples(work, ("mlp",))
        mlp = work / "mlp.tpa"
        http_port, grpc_port, mgmt_port = free_port(), free_port(), free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchport", "serve", "--store", str(work / "store"),
             "--http-port", str(http_port), "--grpc-port", str(grpc_port),
             "--management-port", str(mgmt_port), str(mlp)],
            env={**os.environ, "TORCHPORT_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"),  # noqa: SIM115
        )  # fmt: skip
        url, admin = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{mgmt_port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        outcomes: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        operations: collections.Counter[str] = collections.Counter()
        stop = threading.Event()
        lock = threading.Lock()
        x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}  # fmt: skip

        def note(kind: str, status: int, detail: str = "") -> None:
            with lock:
                outcomes[f"{kind} {status}"] += 1
                if status not in ALLOWED and len(failures) < 50:
                    failures.append(f"{kind} {status} {detail[:200]}")

        def rest() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    try:
                        r = client.post(f"{url}/v2/models/mlp/infer", json=body)
                        note("rest", r.status_code, r.text)
                    except httpx.HTTPError as exc:
                        note("rest", 0, repr(exc))

        def grpc_load() -> None:
            request = pb.ModelInferRequest(
                model_name="mlp",
                inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="input", datatype="FP32", shape=[2, 32],
                    contents=pb.InferTensorContents(fp32_contents=x.reshape(-1).tolist()))],
            )  # fmt: skip
            codes = {grpc.StatusCode.OK: 200, grpc.StatusCode.UNAVAILABLE: 503,
                     grpc.StatusCode.DEADLINE_EXCEEDED: 504}  # fmt: skip
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                infer = stub(channel).ModelInfer
                while not stop.is_set():
                    try:
                        infer(request, timeout=60)
                        note("grpc", 200)
                    except grpc.RpcError as exc:
                        note("grpc", codes.get(exc.code(), 500), f"{exc.code()} {exc.details()}")

        def manage() -> None:
            with httpx.Client(timeout=300, headers=auth) as client:
                while not stop.wait(5):
                    r = client.post(f"{admin}/models/mlp", content=mlp.read_bytes())
                    operations[f"upload {r.status_code}"] += 1
                    version = r.json().get("version")
                    r = client.put(f"{admin}/models/mlp/default", json={"version": version})
                    operations[f"promote {r.status_code}"] += 1
                    if stop.wait(3):
                        break
                    r = client.post(f"{admin}/models/mlp/rollback")
                    operations[f"rollback {r.status_code}"] += 1
                    info = client.get(f"{admin}/models/mlp").json()
                    keep = {info["default"], info["previous"]}
                    for v in info["versions"]:
                        if v["version"] not in keep:
                            r = client.delete(f"{admin}/models/mlp/versions/{v['version']}")
                            operations[f"delete {r.status_code}"] += 1

        threads = [threading.Thread(target=rest) for _ in range(3)]
        threads += [threading.Thread(target=grpc_load) for _ in range(3)]
        threads.append(threading.Thread(target=manage))
        for t in threads:
            t.start()
        time.sleep(min(30.0, args.minutes * 60 / 4))  # warm-up: caches, first switches
        start = footprint(proc.pid)
        started = time.monotonic()
        time.sleep(max(0.0, args.minutes * 60 - (time.monotonic() - started)))
        end = footprint(proc.pid)
        stop.set()
        for t in threads:
            t.join(120)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(60)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "minutes": args.minutes,
        "requests": dict(sorted(outcomes.items())),
        "failed": failures,
        "management": dict(sorted(operations.items())),
        "after_warm_up": start,
        "at_end": end,
        "server_alive_at_end": alive,
        "server_exit_code": exit_code,
    }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if failures or not alive or exit_code != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
