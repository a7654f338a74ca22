"""Serving throughput and latency: torchport against the in-process call and plain services.

    make bench    # or: .venv/bin/python benchmarks/serving.py [--repeat 3] [--duration 5]

Targets, each started fresh per repetition (repetitions interleave the targets):
- `torchport`: `torchport serve` with the package (dynamic batching on, package defaults);
- `fastapi`: a plain FastAPI service on uvicorn, same model, no batching (peers/fastapi_app.py);
- `flask`: a plain Flask service on gunicorn with 2 sync workers (peers/flask_app.py);
- `fastapi-wN`, `flask-wN`: the same with N worker processes, each with cores ÷ N torch
  threads; `--sweep fastapi flask` tries N = 1-4;
- `mlserver-pP-bB[-dD][-grpc]`: MLServer 1.7 (set up in build/mlserver-venv on first use)
  with P parallel workers (0: none), adaptive batching of up to B requests waiting up to
  D ms (b1: none), over REST or gRPC (peers/mlserver.py); `--sweep mlserver mlserver-grpc`
  tries P 0/1/2 with no batching, and B 8/32 with D 1/5;
- `torchserve`, `torchserve-batch`: TorchServe 0.12.0 (set up in build/torchserve-venv on first
  use, Java 17), 2 workers, the same model code and weights; batch size 1, and 8 (mlp) / 32
  (minilm) with a 5 ms delay;
- `torchserve-wW-bB-dD[-quiet]`: TorchServe with W workers (cores ÷ W torch threads each),
  batchSize B, maxBatchDelay D ms, and WARN-level logging with `-quiet`; `--sweep
  torchserve` runs every one of W 1-2, B 1/8/16/32, D 1/5, stock or quiet at c=32 for
  `--sweep-duration` s (after `--sweep-warmup` s) first and adds the best as a target (the
  sweep in the JSON); every peer is swept by default;
- `torchport-fe0`, `torchport-fe1`, … and `torchport-grpc-feN` (`--targets` to add them):
  `torchport serve --frontends N` (0: one process; by default 0 under four cores, else one
  per two cores, at most 4);
- `torchport-ray-1`, `torchport-ray-2` (`--targets` to add them): `torchport serve --backend
  ray` on a local Ray, the version on 1 or 2 replicas (torchport's front end and batching);
- `ray-app`: `torchport ray deploy` (the package as a plain Ray Serve application: Ray's
  proxy, and in each replica torchport's own inference app and batching), 2 replicas;
- `ray-plain`: Ray Serve's own plain deployment of the same model, 2 replicas, its HTTP
  proxy, no batching (peers/ray_app.py): the anchor for the Ray path;
- `torchport-torchscript`, `torchport-onnx`, `torchport-exported` (`--targets` to add
  them): `torchport serve` with the package exported by `torchport export --to ...`
  (same handler and batching; the model runs as TorchScript, on ONNX Runtime, or as a
  `torch.export` program), with the in-process limit of that export beside it;
- `grpc-floor` (`--targets` to add it): grpc.aio answering `ModelInfer` with no model
  behind it (peers/grpc_floor.py): the most calls/s any grpcio service gets here;
- `in-process`: `runner.predict` in a loop (benchmarks/in_process.py), batch 1 and the best
  batch size, one caller over every core or one per core with a torch thread each (the limit).
Workloads: `mlp` (one 32-float row as JSON per request) and `minilm` (one short sentence
per request), closed loop with `wrk` (one thread, counted in the 2-core budget) at 1, 8 and
32 connections, 127.0.0.1 only, bounded by `--duration`. Reported: medians over
`--repeat` of req/s, p50 and p99 latency, server RSS and start-to-ready time; JSON in
`--out`, the table beside it (the same name, `.txt`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.peers, when run as a script
BIN = Path(sys.executable).parent
LUA = ROOT / "benchmarks" / "wrk_post.lua"
SENTENCE = "torchport serves PyTorch models."
CONCURRENCY = (1, 8, 32)
TOKEN = "benchmark-token-0123456789"
FRONTENDS = re.compile(r"torchport(-grpc)?(?:-fe(\d+))?")
"""`torchport`, `torchport-grpc`: the defaults; `-feN`: with `--frontends N`."""
EXPORTS = {
    "torchport-torchscript": "torchscript",
    "torchport-onnx": "onnx",
    "torchport-exported": "exported",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    url: str
    content_type: str
    body: Path
    ready_s: float
    grpc_response_bytes: int = 0
    """gRPC only (loaded with h2load): the size of one framed successful response. h2load
    sees HTTP statuses, not gRPC ones (a failed call is a 200 with no message), so the
    data it received tells how many calls succeeded."""


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, started: float, timeout: float = 180
) -> float:
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"a benchmark target exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"a benchmark target was not ready in {timeout} s")


def start_torchport(
    model: str,
    package: Path,
    work: Path,
    *,
    grpc: bool = False,
    ray_replicas: int = 0,
    frontends: int | None = None,
) -> Started:
    http, grpc_port, mgmt = free_port(), free_port(), free_port()
    store = Path(tempfile.mkdtemp(dir=work)) / "store"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "torchport"), "serve", "--store", str(store), "--http-port", str(http),
         "--grpc-port", str(grpc_port), "--management-port", str(mgmt), str(package)],
        env={**os.environ, "TORCHPORT_TOKEN": TOKEN,
             **({"TORCHPORT_BACKEND": "ray"} if ray_replicas else {}),
             **({} if frontends is None else {"TORCHPORT_FRONTENDS": str(frontends)})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ready = wait_ready(proc, f"http://127.0.0.1:{http}/v2/health/ready", started)
    if ray_replicas:
        set_workers(mgmt, model, ray_replicas)
    if grpc:
        body, answer = grpc_body(model, work, f"127.0.0.1:{grpc_port}")
        url = f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer"
        return Started(proc, url, "application/grpc", body, ready, grpc_response_bytes=answer)
    if model == "mlp":
        url = f"http://127.0.0.1:{http}/v2/models/mlp/infer"
        return Started(proc, url, "application/json", oip_json_body(model, work), ready)
    body = work / "sentence.txt"
    body.write_text(SENTENCE)
    return Started(proc, f"http://127.0.0.1:{http}/predictions/minilm", "text/plain", body, ready)


def oip_json_body(model: str, work: Path) -> Path:
    """One request in OIP v2 JSON: a 32-float row (mlp), or the sentence as BYTES."""
    if model == "mlp":
        tensor = {"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.1] * 32}
    else:
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}
    body = work / f"{model}-oip.json"
    body.write_text(json.dumps({"inputs": [tensor]}))
    return body


def set_workers(management_port: int, model: str, workers: int) -> None:
    """Redeploy the served version with `workers` workers (Ray replicas), and wait."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{management_port}/models/{model}/versions/1/config",
        data=json.dumps({"workers": workers}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.status == 200


def start_ray_app(model: str, package: Path, work: Path) -> Started:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "torchport"), "ray", "deploy", str(package), "--http-port", str(port),
         "--replicas", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/{model}"
    ready = wait_ready(proc, f"{base}/v2/health/ready", started)
    url = f"{base}/v2/models/{model}/infer"
    return Started(proc, url, "application/json", oip_json_body(model, work), ready)


def start_ray_plain(model: str, files: Path, work: Path) -> Started:
    port = free_port()
    env = {**os.environ, "MODEL_KIND": model, "MODEL_FILES": str(files), "PORT": str(port),
           "REPLICAS": "2", "PYTHONPATH": str(ROOT)}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.peers.ray_app"], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ready = wait_ready(proc, f"http://127.0.0.1:{port}/predict", started)
    body, content_type = _plain_body(model, work)
    return Started(proc, f"http://127.0.0.1:{port}/predict", content_type, body, ready)


def grpc_body(model: str, work: Path, address: str) -> tuple[Path, int]:
    """A framed ModelInferRequest as tritonclient.grpc sends it (raw_input_contents),
    checked once through grpcio, since h2load sees only HTTP statuses, not gRPC ones."""
    import grpc
    import numpy as np

    from torchport.tensors import to_raw
    from torchport.transports.grpc.convert import pb, stub

    request = pb.ModelInferRequest(model_name=model)
    if model == "mlp":
        request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
        request.raw_input_contents.append(to_raw(np.full((1, 32), 0.1, np.float32)))
    else:
        request.inputs.add(name="text", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(to_raw(np.array([SENTENCE.encode()], dtype=object)))
    with grpc.insecure_channel(address) as channel:
        response = stub(channel).ModelInfer(request, timeout=60)
    message = request.SerializeToString()
    body = work / f"{model}-grpc.bin"
    body.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
    return body, 5 + len(response.SerializeToString())


def start_grpc_floor(model: str, package: Path, work: Path) -> Started:
    """grpc.aio answering `ModelInfer` without a model (peers/grpc_floor.py)."""
    import grpc

    from torchport.transports.grpc.convert import pb, stub

    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.peers.grpc_floor", str(port), str(package)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"grpc-floor exited with {proc.returncode}")
            try:
                stub(channel).ServerLive(pb.ServerLiveRequest(), timeout=1)
                break
            except grpc.RpcError:
                if time.perf_counter() - started > 60:
                    raise SystemExit("grpc-floor was not ready in 60 s") from None
                time.sleep(0.05)
    ready = time.perf_counter() - started
    body, answer = grpc_body(model, work, address)
    url = f"http://{address}/inference.GRPCInferenceService/ModelInfer"
    return Started(proc, url, "application/grpc", body, ready, grpc_response_bytes=answer)


def _plain_body(model: str, work: Path) -> tuple[Path, str]:
    if model == "mlp":
        body = work / "mlp-plain.json"
        body.write_text(json.dumps({"input": [[0.1] * 32]}))
        return body, "application/json"
    body = work / "sentence.txt"
    body.write_text(SENTENCE)
    return body, "text/plain"


PLAIN = re.compile(r"(fastapi|flask)(?:-w(\d+))?")
"""`fastapi`, `flask`: 1 uvicorn worker, 2 gunicorn workers; `-wN`: N worker processes, each
with cores ÷ N torch threads."""
PLAIN_SWEEPS = {kind: [f"{kind}-w{w}" for w in (1, 2, 3, 4)] for kind in ("fastapi", "flask")}


def start_plain(kind: str, model: str, files: Path, work: Path, workers: int | None) -> Started:
    port = free_port()
    env = {**os.environ, "MODEL_KIND": model, "MODEL_FILES": str(files), "PYTHONPATH": str(ROOT)}
    if workers is not None:
        env["TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    if kind == "fastapi":
        command = [
            str(BIN / "uvicorn"),
            "benchmarks.peers.fastapi_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers or 1),
        ]
    else:
        command = [
            str(BIN / "gunicorn"),
            "-w",
            str(workers or 2),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "benchmarks.peers.flask_app:app",
        ]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ready = wait_ready(proc, f"http://127.0.0.1:{port}/ready", started)
    body, content_type = _plain_body(model, work)
    return Started(proc, f"http://127.0.0.1:{port}/predict", content_type, body, ready)


MLSERVER = re.compile(r"mlserver-p(\d+)-b(\d+)(?:-d(\d+))?(-grpc)?")
"""`mlserver-p2-b32-d5-grpc`: MLServer 1.7 with 2 parallel workers (0: none), adaptive
batching of up to 32 requests waiting up to 5 ms (b1: no batching), loaded over gRPC."""
MLSERVER_SWEEP = [
    f"mlserver-p{p}-{batching}"
    for p in (0, 1, 2)
    for batching in ("b1", "b8-d1", "b8-d5", "b32-d1", "b32-d5")
]


def start_mlserver(model: str, files: Path, work: Path, target: str) -> Started:
    from benchmarks.peers import mlserver

    config = MLSERVER.fullmatch(target)
    assert config is not None
    workers, batch = int(config.group(1)), int(config.group(2))
    delay, grpc = int(config.group(3) or 0), bool(config.group(4))
    mlserver.ensure_venv()
    ports = (free_port(), free_port(), free_port())
    started = time.perf_counter()
    proc = mlserver.start(
        model, files, work / f"mls-{ports[0]}", ports,
        workers=workers, batch_size=batch, max_batch_delay_ms=delay,
    )  # fmt: skip
    try:
        ready = wait_ready(proc, f"http://127.0.0.1:{ports[0]}/v2/models/{model}/ready", started)
    except SystemExit:
        stop(proc)
        raise
    if grpc:
        body, answer = grpc_body(model, work, f"127.0.0.1:{ports[1]}")
        url = f"http://127.0.0.1:{ports[1]}/inference.GRPCInferenceService/ModelInfer"
        return Started(proc, url, "application/grpc", body, ready, grpc_response_bytes=answer)
    url = f"http://127.0.0.1:{ports[0]}/v2/models/{model}/infer"
    return Started(proc, url, "application/json", oip_json_body(model, work), ready)


TORCHSERVE = re.compile(r"torchserve-w(\d+)-b(\d+)-d(\d+)(-quiet)?")
"""`torchserve-w1-b16-d5-quiet`: workers, batchSize, maxBatchDelay (ms), WARN-level logs;
each worker with cores ÷ workers torch threads."""
TORCHSERVE_SWEEP = [
    f"torchserve-w{w}-b{b}-d{d}{q}"
    for w in (1, 2)
    for b in (1, 8, 16, 32)
    for d in (1, 5)
    for q in ("", "-quiet")
]


def start_torchserve(model: str, files: Path, work: Path, target: str) -> Started:
    from benchmarks.peers import torchserve

    torchserve.ensure_venv()
    store = work / f"ts-{model}"
    if not (store / f"{model}.mar").exists():
        torchserve.archive(model, files, store)
    ports = (free_port(), free_port(), free_port())
    config = TORCHSERVE.fullmatch(target)
    if config:
        workers, batch, delay = (int(config.group(i)) for i in (1, 2, 3))
        quiet = bool(config.group(4))
        threads = max(1, (os.cpu_count() or 1) // workers)
    else:  # the first two: stock settings, 2 workers
        workers, delay, quiet, threads = 2, 5, False, 0
        batch = (8 if model == "mlp" else 32) if target == "torchserve-batch" else 1
    started = time.perf_counter()
    proc = torchserve.start(
        model, store, ports, batch_size=batch, workers=workers, max_batch_delay_ms=delay,
        quiet=quiet, torch_threads=threads,
    )  # fmt: skip
    body, content_type = _plain_body(model, work)
    url = f"http://127.0.0.1:{ports[0]}/predictions/{model}"
    deadline = started + 180
    while True:  # ready when a real prediction succeeds
        try:
            request = urllib.request.Request(
                url, data=body.read_bytes(), headers={"Content-Type": content_type}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.perf_counter() > deadline or proc.poll() is not None:
            torchserve.stop(proc)
            log = store / f"torchserve-{ports[0]}.out"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"TorchServe did not become ready:\n{tail}")
        time.sleep(0.1)
    return Started(proc, url, content_type, body, time.perf_counter() - started)


def start_target(target: str, model: str, package: Path, files: Path, work: Path) -> Started:
    """Start a target; a start that fails (say, a free port taken meanwhile) is retried."""
    for attempt in range(3):
        try:
            served = FRONTENDS.fullmatch(target)
            if served:
                processes = None if served.group(2) is None else int(served.group(2))
                return start_torchport(
                    model, package, work, grpc=bool(served.group(1)), frontends=processes
                )
            if target in EXPORTS:
                return start_torchport(model, exported(package, EXPORTS[target], work), work)
            if target.startswith("torchport-ray-"):
                replicas = int(target.rsplit("-", 1)[1])
                return start_torchport(model, package, work, ray_replicas=replicas)
            if target == "grpc-floor":
                return start_grpc_floor(model, package, work)
            if target == "ray-app":
                return start_ray_app(model, package, work)
            if target == "ray-plain":
                return start_ray_plain(model, files, work)
            if target.startswith("torchserve"):
                return start_torchserve(model, files, work, target)
            if target.startswith("mlserver"):
                return start_mlserver(model, files, work, target)
            plain = PLAIN.fullmatch(target)
            if plain is None:
                raise SystemExit(f"unknown target {target!r}")
            workers = None if plain.group(2) is None else int(plain.group(2))
            return start_plain(plain.group(1), model, files, work, workers)
        except SystemExit as exc:
            print(f"{target} failed to start ({exc}); attempt {attempt + 1} of 3", file=sys.stderr)
            time.sleep(1)
    raise SystemExit(f"{target} did not start")


def exported(package: Path, kind: str, work: Path) -> Path:
    """The package exported to `kind` (made once per run, parity checked by the export)."""
    out = work / f"{package.stem}.{kind}.tpa"
    if not out.exists():
        subprocess.run(
            [str(BIN / "torchport"), "export", str(package), "--to", kind, "-o", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    pids = [pid]
    for p in pids:  # grows as children are found, whichever thread started them
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(c) for c in (task / "children").read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.pid == os.getpgid(proc.pid):  # its own session (TorchServe's JVM, MLServer)
        from benchmarks.peers import torchserve

        torchserve.stop(proc)
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def h2load(target: Started, connections: int, duration: float, warmup: int = 1) -> dict[str, float]:
    """Closed loop over HTTP/2 like `wrk`'s: `connections` connections, one request in
    flight on each; latencies from h2load's per-request log."""
    log = target.body.with_suffix(".log")
    log.unlink(missing_ok=True)  # h2load appends to its log
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    base = ["h2load", "-t1", f"-c{connections}", "-m1", f"--data={target.body}", *headers]
    subprocess.run([*base, f"-D{warmup}", target.url], capture_output=True, check=True)
    out = subprocess.run(
        [*base, f"-D{int(duration)}", f"--log-file={log}", target.url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    latencies = sorted(int(r[2]) / 1000 for r in rows)
    data = re.search(r"traffic: .*?\((\d+)\) data", out)
    answered = int(data.group(1)) // target.grpc_response_bytes if data else 0
    errors = max(0, len(rows) - answered) + sum(1 for r in rows if r[1] != "200")
    return {
        "rps": len(rows) / duration,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "errors": float(errors),
        "timeouts": 0.0,
    }


def wrk(
    target: Started, connections: int, duration: float, script: Path = LUA, warmup: int = 1
) -> dict[str, float]:
    env = {**os.environ, "BODY_FILE": str(target.body), "CONTENT_TYPE": target.content_type}
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        target.url,
    ]
    subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{warmup}s", "-s", str(script), target.url],
        env=env,
        capture_output=True,
        check=True,
    )  # warm-up
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    timeouts = re.search(r"timeout (\d+)", out)
    result["timeouts"] = float(timeouts.group(1)) if timeouts else 0.0
    return result


def in_process(package: Path, model: str, seconds: float) -> dict[str, float]:
    """The physical limit (benchmarks/in_process.py), in a fresh process of its own."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "in_process.py"), str(package), model,
         "--seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["mlp", "minilm"])
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["torchport", "torchport-grpc", "fastapi"],
    )
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=["torchserve", "mlserver", "mlserver-grpc", "fastapi", "flask"],
        choices=["torchserve", "mlserver", "mlserver-grpc", "fastapi", "flask"],
        help="peers whose settings are swept first (c=32, --sweep-duration each after "
        "--sweep-warmup); the "
        "best configuration then runs as a target (default: all; `--sweep` alone: none)",
    )
    parser.add_argument("--sweep-duration", type=int, default=3)
    parser.add_argument("--sweep-warmup", type=int, default=4)
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if any("grpc" in t for t in args.targets) and shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed: apt-get install nghttp2-client")

    from torchport.examples import build_examples

    missing = tuple(m for m in args.models if not (args.examples / f"{m}.tpa").exists())
    if missing:
        build_examples(args.examples, missing)

    results: dict[str, Any] = {
        "machine": machine(),
        "repeat": args.repeat,
        "duration_s": args.duration,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="torchport-bench-") as tmp:
        work = Path(tmp)
        for model in args.models:
            package = args.examples / f"{model}.tpa"
            files = work / f"{model}-files"
            with zipfile.ZipFile(package) as zf:
                zf.extractall(files)
            targets = list(args.targets)
            sweeps: dict[str, Any] = {}
            for peer in args.sweep:
                swept = sweep(
                    peer, model, package, files, work, args.sweep_duration, args.sweep_warmup
                )
                sweeps[peer] = swept
                targets.append(swept["best"])
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            inproc: list[dict[str, float]] = []
            inproc_exports: dict[str, list[dict[str, float]]] = {
                EXPORTS[t]: [] for t in args.targets if t in EXPORTS
            }
            for rep in range(args.repeat):
                if "torchport" not in targets:
                    inproc.append(in_process(package, model, 2.0))
                order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
                for target in order:
                    # A limit is measured just before the target served against it: the
                    # host's speed drifts over minutes, and a ratio wants the same minutes.
                    if target == "torchport":
                        inproc.append(in_process(package, model, 2.0))
                    if target in EXPORTS:
                        kind = EXPORTS[target]
                        inproc_exports[kind].append(
                            in_process(exported(package, kind, work), model, 2.0)
                        )
                    started = start_target(target, model, package, files, work)
                    try:
                        run: dict[str, Any] = {"ready_s": started.ready_s}
                        for c in CONCURRENCY:
                            load = h2load if started.grpc_response_bytes else wrk
                            run[f"c{c}"] = load(started, c, args.duration)
                        run["rss_mb"] = rss_bytes(started.proc.pid) / 1024 / 1024
                    finally:
                        stop(started.proc)
                    runs[target].append(run)
                    print(
                        f"{model} rep {rep + 1} {target}: "
                        + ", ".join(f"c{c} {run[f'c{c}']['rps']:.0f}/s" for c in CONCURRENCY),
                        file=sys.stderr,
                    )
            summary: dict[str, Any] = {}
            for target, target_runs in runs.items():
                med: dict[str, Any] = {
                    "ready_s": statistics.median(r["ready_s"] for r in target_runs),
                    "rss_mb": statistics.median(r["rss_mb"] for r in target_runs),
                }
                for c in CONCURRENCY:
                    med[f"c{c}"] = {
                        k: statistics.median(r[f"c{c}"][k] for r in target_runs)
                        for k in target_runs[0][f"c{c}"]
                    }
                summary[target] = med
            summary["in-process"] = {k: statistics.median(r[k] for r in inproc) for k in inproc[0]}
            for kind, export_runs in inproc_exports.items():
                summary[f"in-process-{kind}"] = {
                    k: statistics.median(r[k] for r in export_runs) for k in export_runs[0]
                }
            results["models"][model] = {
                "median": summary,
                "runs": runs,
                "in_process_runs": inproc,
                **({"sweeps": sweeps} if sweeps else {}),
                **({"in_process_export_runs": inproc_exports} if inproc_exports else {}),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        print_table(results)
    args.out.with_suffix(".txt").write_text(table.getvalue())  # beside the JSON
    print(table.getvalue(), end="")


def sweep(
    peer: str, model: str, package: Path, files: Path, work: Path, duration: int, warmup: int
) -> dict[str, Any]:
    """Every configuration of `peer` at c=32 for `duration` s (after `warmup` s of the
    same load): req/s of each, and the best."""
    configs = {
        "torchserve": TORCHSERVE_SWEEP,
        "mlserver": MLSERVER_SWEEP,
        "mlserver-grpc": [f"{c}-grpc" for c in MLSERVER_SWEEP],
        **PLAIN_SWEEPS,
    }[peer]
    tried: dict[str, float] = {}
    for config in configs:
        started = start_target(config, model, package, files, work)
        try:
            load = h2load if started.grpc_response_bytes else wrk
            # A longer warm-up than the repetitions' 1 s: they load c=32 after 10 s of
            # c=1 and c=8, and a JVM (TorchServe's front end) is still compiling at 1 s.
            result = load(started, 32, duration, warmup=warmup)
            tried[config] = result["rps"] if not result["errors"] else 0.0
        finally:
            stop(started.proc)
        print(f"{model} sweep {config}: c32 {tried[config]:.0f}/s", file=sys.stderr)
    best = max(tried, key=lambda c: tried[c])
    return {"duration_s": duration, "warmup_s": warmup, "rps_at_c32": tried, "best": best}


def against_limits(runs: list[dict[str, Any]], limits: list[dict[str, float]]) -> list[float]:
    """Each repetition's c=32 req/s over the in-process limit measured just before it."""
    return [a["c32"]["rps"] / b["best_batch_rows_per_s"] for a, b in zip(runs, limits, strict=True)]


def paired(what: str, ratios: list[float]) -> str:
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{what} {statistics.median(ratios):.2f}x (median of {each})"


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"\n{m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}, torch {m['torch']}; "
        f"medians of {results['repeat']} runs of {results['duration_s']} s"
    )
    head = ["model", "target"]
    for c in CONCURRENCY:
        head += [f"c={c} req/s", f"c={c} p50 / p99 ms"]
    head += ["RSS MiB", "ready s"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, data in results["models"].items():
        for target, s in data["median"].items():
            if target.startswith("in-process"):
                size, rows = s["best_batch_size"], s["best_batch_rows_per_s"]
                best = f"best batch {size:.0f}: {rows:.0f} rows/s"
                if "best_callers" in s:
                    callers, threads = s["best_callers"], s["best_torch_threads"]
                    best += f" ({callers:.0f} callers x {threads:.0f} torch threads)"
                row = [model, target, f"{s['rps']:.0f}", f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}"]
                print("| " + " | ".join([*row, best, "", "", "", "", ""]) + " |")
                continue
            cells = [model, target]
            for c in CONCURRENCY:
                r = s[f"c{c}"]
                cells += [f"{r['rps']:.0f}", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}"]
            cells += [f"{s['rss_mb']:.0f}", f"{s['ready_s']:.1f}"]
            print("| " + " | ".join(cells) + " |")
    for model, data in results["models"].items():
        s = data["median"]
        if "torchport" not in s or "fastapi" not in s:
            continue
        tp, fa, best = s["torchport"], s["fastapi"], s["in-process"]["best_batch_rows_per_s"]
        print(
            f"\n{model}: torchport/fastapi req/s at c=32 "
            f"{tp['c32']['rps'] / fa['c32']['rps']:.2f}x; "
            f"p50 at c=1 {tp['c1']['p50_ms'] / fa['c1']['p50_ms']:.2f}x; "
            f"torchport at c=32 / in-process best batch {tp['c32']['rps'] / best:.2f}x"
        )
        served, peer = data["runs"]["torchport"], data["runs"]["fastapi"]
        limits = data["in_process_runs"]
        latency = [a["c1"]["p50_ms"] / b["c1"]["p50_ms"] for a, b in zip(served, peer, strict=True)]
        share = against_limits(served, limits)
        print(
            f"{model}, each repetition against its own: "
            f"{paired('torchport/fastapi p50 at c=1', latency)}; "
            f"{paired('torchport at c=32 / the in-process best batch just before', share)}"
        )
    for model, data in results["models"].items():
        for peer, swept in data.get("sweeps", {}).items():
            ours = "torchport-grpc" if peer.endswith("grpc") else "torchport"
            best = swept["best"]
            if ours not in data["runs"] or best not in data["runs"]:
                continue
            c32 = [
                a["c32"]["rps"] / b["c32"]["rps"]
                for a, b in zip(data["runs"][ours], data["runs"][best], strict=True)
            ]
            c1 = [
                a["c1"]["p50_ms"] / b["c1"]["p50_ms"]
                for a, b in zip(data["runs"][ours], data["runs"][best], strict=True)
            ]
            print(
                f"{model}: {ours} against {peer} at its best ({best}, of "
                f"{len(swept['rps_at_c32'])} swept): {paired('req/s at c=32', c32)}; "
                f"{paired('p50 at c=1', c1)}"
            )
    for model, data in results["models"].items():
        s = data["median"]
        best = s["in-process"]["best_batch_rows_per_s"]
        for target, kind in EXPORTS.items():
            if target in s:
                own = s[f"in-process-{kind}"]["best_batch_rows_per_s"]
                rps = s[target]["c32"]["rps"]
                limits = data["in_process_export_runs"][kind]
                share = against_limits(data["runs"][target], limits)
                print(
                    f"{model}: {target} at c=32 / in-process best batch {rps / best:.2f}x "
                    f"(of the {kind} export in-process: {rps / own:.2f}x; "
                    f"{paired('each repetition against its own', share)})"
                )
        if "grpc-floor" in s:
            floor = s["grpc-floor"]["c32"]["rps"]
            for target in ("torchport", "torchport-grpc"):
                if target in s:
                    ratio = s[target]["c32"]["rps"] / floor
                    print(f"{model}: {target} at c=32 / grpc-floor {ratio:.2f}x")


if __name__ == "__main__":
    main()
