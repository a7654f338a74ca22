"""Start-to-ready time of `torchport serve --examples`.

    make bench    # or: .venv/bin/python benchmarks/serve_ready.py [--repeat 3]

Two cases, each a fresh process, timed from `exec` to the first 200 of `/v2/health/ready`:
- first start on an empty store: builds the three example models (digits trains), verifies
  and registers them, loads them, opens the ports;
- restart on that store: loads the registered versions and opens the ports.
Medians over `--repeat` runs; results in benchmarks/results/serve_ready.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_ready(store: Path) -> float:
    http, mgmt = free_port(), free_port()
    command = [
        sys.executable, "-m", "torchport", "serve", "--examples", "--store", str(store),
        "--http-port", str(http), "--management-port", str(mgmt),
    ]  # fmt: skip
    env = {**os.environ, "TORCHPORT_TOKEN": "benchmark-token-0123456789"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return until_ok(proc, lambda: f"http://127.0.0.1:{http}/v2/health/ready", started)


def until_ok(
    proc: subprocess.Popen[bytes],
    request: Callable[[], str | urllib.request.Request],
    started: float,
) -> float:
    """Seconds from `started` to the first 200 answer to `request()` (asked again every
    20 ms); the server is stopped after."""
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(request(), timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve_ready.json")
    args = parser.parse_args()
    first: list[float] = []
    restart: list[float] = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "store"
            first.append(time_to_ready(store))
            restart.append(time_to_ready(store))
        print(
            f"run {i + 1}: first start {first[-1]:.1f} s, restart {restart[-1]:.1f} s",
            file=sys.stderr,
        )
    result = {
        "first_start_s": statistics.median(first),
        "restart_s": statistics.median(restart),
        "runs": {"first_start_s": first, "restart_s": restart},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| `torchport serve --examples` | start to ready (median) |")
    print("|---|---|")
    print(
        "| first start, empty store (build + verify + register + load) "
        f"| {result['first_start_s']:.1f} s |"
    )
    print(f"| restart on the same store (load + listen) | {result['restart_s']:.1f} s |")


if __name__ == "__main__":
    main()
