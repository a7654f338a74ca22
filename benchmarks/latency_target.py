"""A latency target instead of knobs: `target_p99_ms` against the default batching policy.

    make bench    # or: .venv/bin/python benchmarks/latency_target.py [--repeat 3]

One `torchport serve` with `minilm`; for each policy, set live through the management API
(`PUT /models/minilm/versions/1/config`), `wrk` (as a client that honours `Retry-After`,
benchmarks/wrk_post_retry_after.lua) loads it at 8 and 32 connections for
`--duration` s. Policies interleave across repetitions; medians of answered req/s, p50
and p99 of all responses, and the share refused (503, answered at once) under a target.
Written to benchmarks/results/latency_target.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    BIN,
    SENTENCE,
    Started,
    free_port,
    stop,
    wait_ready,
    wrk,
)

TOKEN = "benchmark-token-0123456789"
RETRY_AFTER = ROOT / "benchmarks" / "wrk_post_retry_after.lua"
POLICIES: dict[str, dict[str, Any]] = {
    "package defaults (max 32 rows, 5 ms)": {"target_p99_ms": None},
    "target_p99_ms = 150": {"target_p99_ms": 150},
    "target_p99_ms = 80": {"target_p99_ms": 80},
}


def configure(management: str, config: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{management}/models/minilm/versions/1/config",
        data=json.dumps(config).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/latency_target.json")
    args = parser.parse_args()
    from torchport.examples import build_examples

    package = args.examples / "minilm.tpa"
    if not package.exists():
        build_examples(args.examples, ("minilm",))
    runs: dict[str, dict[int, list[dict[str, float]]]] = {p: {8: [], 32: []} for p in POLICIES}
    with tempfile.TemporaryDirectory(prefix="torchport-bench-") as tmp:
        work = Path(tmp)
        http, grpc, mgmt = free_port(), free_port(), free_port()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "torchport"), "serve", "--store", str(work / "store"),
             "--http-port", str(http), "--grpc-port", str(grpc),
             "--management-port", str(mgmt), str(package)],
            env={**os.environ, "TORCHPORT_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            ready = wait_ready(proc, f"http://127.0.0.1:{http}/v2/health/ready", started)
            body = work / "sentence.txt"
            body.write_text(SENTENCE)
            target = Started(
                proc, f"http://127.0.0.1:{http}/predictions/minilm", "text/plain", body, ready
            )
            names = list(POLICIES)
            for rep in range(args.repeat):
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    configure(f"http://127.0.0.1:{mgmt}", POLICIES[name])
                    for c in (8, 32):
                        result = wrk(target, c, args.duration, RETRY_AFTER)
                        refused = result["errors"] / args.duration
                        result["ok_rps"] = result["rps"] - refused
                        result["refused_pct"] = 100 * refused / result["rps"]
                        runs[name][c].append(result)
                    print(
                        f"rep {rep + 1} {name}: "
                        + ", ".join(
                            f"c{c} {runs[name][c][-1]['ok_rps']:.0f}/s ok "
                            f"p99 {runs[name][c][-1]['p99_ms']:.0f} ms"
                            for c in (8, 32)
                        ),
                        file=sys.stderr,
                    )
        finally:
            stop(proc)
    medians = {
        name: {
            f"c{c}": {
                k: statistics.median(r[k] for r in rs)
                for k in ("ok_rps", "p50_ms", "p99_ms", "refused_pct")
            }
            for c, rs in by_c.items()
        }
        for name, by_c in runs.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"medians": medians, "runs": runs}, indent=2))
    head = "| minilm policy | c=8 ok req/s | c=8 p50 / p99 ms | c=8 refused "
    head += "| c=32 ok req/s | c=32 p50 / p99 ms | c=32 refused |"
    print("\n" + head)
    print("|---|---|---|---|---|---|---|")
    for name, m in medians.items():
        cells = [name]
        for c in ("c8", "c32"):
            cells += [
                f"{m[c]['ok_rps']:.0f}",
                f"{m[c]['p50_ms']:.1f} / {m[c]['p99_ms']:.1f}",
                f"{m[c]['refused_pct']:.0f} %",
            ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
