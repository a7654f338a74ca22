"""CPU per request: where a served request's time goes, steadier than req/s on a noisy host.

    .venv/bin/python benchmarks/cpu_cost.py [--models mlp minilm] [--repeat 3] [--duration 5]

Starts `torchport serve` per model, loads it at 32 connections over REST (`wrk`) and over
gRPC (`h2load`), and reads the server's CPU time from /proc before and after: the main
thread (the event loop: protocol, decoding, the inference service, batching) and every
thread together (the model's threads included), each divided by the requests answered.
Throughput on 2 shared cores swings ±25 % between runs; CPU time per request moves much
less, so this tells whether a change to a transport made it cheaper. Medians of
`--repeat`; results in benchmarks/results/cpu_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serving import Started, h2load, start_torchport, wrk  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, whole process) CPU seconds, user + system, from /proc."""

    def stat(path: Path) -> float:
        fields = path.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime

    return stat(Path(f"/proc/{pid}/task/{pid}/stat")), stat(Path(f"/proc/{pid}/stat"))


def measure(target: Started, grpc: bool, duration: float) -> dict[str, float]:
    pid = target.proc.pid
    load = h2load if grpc else wrk
    load(target, 32, 1)  # warm-up
    main_before, all_before = cpu_seconds(pid)
    result = load(target, 32, duration)
    main_after, all_after = cpu_seconds(pid)
    requests = result["rps"] * duration
    return {
        "rps": result["rps"],
        "main_us": (main_after - main_before) / requests * 1e6,
        "process_us": (all_after - all_before) / requests * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "minilm"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu_cost.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="torchport-cpu-") as tmp:
        work = Path(tmp)
        for model in args.models:
            package = args.examples / f"{model}.tpa"
            runs: dict[str, list[dict[str, float]]] = {"rest": [], "grpc": []}
            for rep in range(args.repeat):
                for protocol in ("rest", "grpc"):  # interleaved
                    grpc = protocol == "grpc"
                    target = start_torchport(model, package, work, grpc=grpc)
                    try:
                        run = measure(target, grpc, args.duration)
                    finally:
                        target.proc.terminate()
                        target.proc.wait(60)
                    runs[protocol].append(run)
                    print(f"{model} rep {rep + 1} {protocol}: {run['rps']:.0f} req/s, main "
                          f"{run['main_us']:.0f} µs, process {run['process_us']:.0f} µs a request",
                          flush=True)  # fmt: skip
            results[model] = {
                protocol: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                for protocol, rs in runs.items()
            }
    summary = {"concurrency": 32, "repeat": args.repeat, "duration_s": args.duration}
    args.out.write_text(json.dumps({**summary, "models": results}, indent=2))
    print("| model | protocol | req/s | main thread µs/request | process µs/request |")
    print("|---|---|---|---|---|")
    for model, by_protocol in results.items():
        for protocol, m in by_protocol.items():
            print(f"| {model} | {protocol} | {m['rps']:.0f} | {m['main_us']:.0f} | "
                  f"{m['process_us']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
