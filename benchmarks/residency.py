"""Memory within a budget: what eviction gives back, what an on-demand model's first
request costs, and what worker processes of one version share.

    .venv/bin/python benchmarks/residency.py [--cycles 100]

1. **Load/evict cycles**: a server whose `max_resident_bytes` holds one of two on-demand
   models of 64 MiB of weights each; requests alternate between them, so each one loads
   its model and evicts the other. The server's RSS after cycle 1, 10, 50 and the last.
2. **Cold and resident first requests**: `mlp` and `minilm` on demand; a request while the
   model is not resident (it loads, warms up and answers) against one while it is
   (medians of 5 each, the model evicted between cold ones).
3. **Worker processes share weights**: `minilm` with `worker_kind = "process"` and 1, then
   4 workers; RSS, PSS (each shared page divided among its sharers) and private memory
   summed over the server and its workers (/proc/PID/smaps_rollup), and the same for the
   mapped weights file alone: its RSS counts each worker's view of the pages, its PSS
   the pages themselves.

Results in benchmarks/results/residency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.server import ServerProcess, oip_body, upload  # noqa: E402
from tests.helpers import scaled_packages  # noqa: E402

from torchport.examples import build_examples  # noqa: E402

MiB = 1 << 20


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and private bytes of a process (smaps_rollup), and the RSS and PSS of its
    mapped weights files (`*.safetensors` mappings in smaps)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * 1024
    weights = {"Rss": 0, "Pss": 0}
    mapping = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            mapping = head[5] if len(head) > 5 else ""
        elif mapping.endswith(".safetensors") and head and head[0][:-1] in weights:
            weights[head[0][:-1]] += int(head[1]) * 1024
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
        "weights_rss": weights["Rss"],
        "weights_pss": weights["Pss"],
    }


def tree(pid: int) -> dict[str, int]:
    """`memory` summed over a process and its children."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # its parent
            pids.append(int(stat.parent.name))
    total = {"processes": len(pids)}
    for p in pids:
        for key, value in memory(p).items():
            total[key] = total.get(key, 0) + value
    return total


CLIENT = httpx.Client(timeout=120)


def request(server: ServerProcess, model: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = CLIENT.post(f"{server.url}/v2/models/{model}/infer", json=body)
    answer.raise_for_status()
    return time.perf_counter() - started


def configure(server: ServerProcess, model: str, config: dict[str, Any]) -> None:
    answer = httpx.put(
        f"{server.management_url}/models/{model}/versions/1/config",
        json=config,
        headers=server.auth,
        timeout=300,
    )
    answer.raise_for_status()


def cycles(tmp: Path, count: int) -> dict[str, Any]:
    big = scaled_packages(tmp / "big", 2, 16 * MiB // 4)  # 64 MiB of weights each
    server = ServerProcess(
        tmp / "cycles" / "store",
        TORCHPORT_MAX_RESIDENT_BYTES=str(100 * MiB),
        TORCHPORT_RESIDENCY="on_demand",
    )
    server.store.parent.mkdir(parents=True)
    server.start()
    try:
        for package in big:
            upload(server, package, package.stem)
        x = np.ones((1, 4), dtype=np.float32)
        body = oip_body("x", x)
        seen: dict[int, int] = {}
        before = memory(server.pid)["rss"]
        for cycle in range(1, count + 1):
            request(server, "s00", body)
            request(server, "s01", body)
            if cycle in (1, 10, 50, count):
                seen[cycle] = memory(server.pid)["rss"]
        return {
            "model_weights_mib": 64,
            "budget_mib": 100,
            "rss_before_mib": round(before / MiB, 1),
            "rss_after_cycle_mib": {str(k): round(v / MiB, 1) for k, v in seen.items()},
            "growth_cycle_10_to_last_mib": round((seen[count] - seen[10]) / MiB, 1),
        }
    finally:
        server.stop()


def cold_and_resident(tmp: Path, packages: dict[str, Path], repeat: int = 5) -> dict[str, Any]:
    server = ServerProcess(tmp / "cold" / "store", TORCHPORT_RESIDENCY="on_demand")
    server.store.parent.mkdir(parents=True)
    server.start()
    bodies = {
        "mlp": oip_body("input", np.ones((1, 32), dtype=np.float32)),
        "minilm": {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]
        },
    }
    out: dict[str, Any] = {}
    try:
        for name, package in packages.items():
            upload(server, package, name)
            cold, warm = [], []
            for _ in range(repeat):
                httpx.post(
                    f"{server.management_url}/models/{name}/versions/1/unload",
                    headers=server.auth,
                    timeout=60,
                ).raise_for_status()
                cold.append(request(server, name, bodies[name]))
                warm.append(request(server, name, bodies[name]))
            out[name] = {
                "cold_ms": round(statistics.median(cold) * 1000, 1),
                "resident_ms": round(statistics.median(warm) * 1000, 2),
            }
    finally:
        server.stop()
    return out


def shared_workers(tmp: Path, minilm: Path) -> dict[str, Any]:
    server = ServerProcess(tmp / "workers" / "store")
    server.store.parent.mkdir(parents=True)
    server.start()
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    out: dict[str, Any] = {}
    try:
        upload(server, minilm, "minilm")
        base = tree(server.pid)
        out["threads (in the server)"] = base
        for workers in (1, 4):
            configure(server, "minilm", {"worker_kind": "process", "workers": workers})
            for _ in range(8):
                request(server, "minilm", body)
            time.sleep(1)
            out[f"{workers} worker process(es)"] = tree(server.pid)
    finally:
        server.stop()
    return {
        k: {m: (round(v / MiB, 1) if m != "processes" else v) for m, v in row.items()}
        for k, row in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/residency.json")
    args = parser.parse_args()
    examples = ROOT / "build" / "examples"
    missing = tuple(n for n in ("mlp", "minilm") if not (examples / f"{n}.tpa").exists())
    if missing:
        build_examples(examples, missing)
    packages = {name: examples / f"{name}.tpa" for name in ("mlp", "minilm")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_evict_cycles": cycles(tmp, args.cycles),
            "first_request": cold_and_resident(tmp, packages),
            "minilm_worker_processes": shared_workers(tmp, packages["minilm"]),
            "command": "benchmarks/residency.py " + " ".join(sys.argv[1:]),
        }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
