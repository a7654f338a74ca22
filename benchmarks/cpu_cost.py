"""CPU per request: where a served request's time goes, steadier than req/s on a noisy host.

    .venv/bin/python benchmarks/cpu_cost.py [--models mlp minilm] [--repeat 3] [--duration 5]

Starts `torchport serve` per model (`--frontends N` for each N given: 0 is one process),
loads it at 32 connections over REST (`wrk`) and over gRPC (`h2load`), and reads CPU time
from /proc before and after, by process: the engine's main thread (the event loop: with
no front ends protocol, decoding, the inference service and batching; with front ends the
intake, the inference service and batching), the engine's every thread (the model's
threads included), the front ends together, and the whole process tree — each divided by
the requests answered.
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


def _stat(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the server's processes by what they are: `main`
    (the engine's event-loop thread), `engine` (all its threads), `frontends`, `total`
    (the tree, the supervisor included)."""
    kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    kinds = {pid: "engine"}
    for child in kids:
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"torchport.supervisor" in argv:
            kind = argv[argv.index(b"torchport.supervisor") + 1].decode()
            kinds[child] = kind
            if kind == "engine":
                kinds[pid] = "supervisor"
        else:
            kinds[child] = "worker"
    out = {"main": 0.0, "engine": 0.0, "frontends": 0.0, "total": 0.0}
    for process, kind in kinds.items():
        seconds = _stat(Path(f"/proc/{process}/stat"))
        out["total"] += seconds
        if kind == "engine":
            out["engine"] += seconds
            out["main"] += _stat(Path(f"/proc/{process}/task/{process}/stat"))
        elif kind == "frontend":
            out["frontends"] += seconds
    return out


def measure(target: Started, grpc: bool, duration: float) -> dict[str, float]:
    pid = target.proc.pid
    load = h2load if grpc else wrk
    load(target, 32, 1)  # warm-up
    before = cpu_seconds(pid)
    result = load(target, 32, duration)
    after = cpu_seconds(pid)
    requests = result["rps"] * duration
    return {
        "rps": result["rps"],
        **{f"{k}_us": (after[k] - before[k]) / requests * 1e6 for k in before},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "minilm"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--frontends", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu_cost.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="torchport-cpu-") as tmp:
        work = Path(tmp)
        for model in args.models:
            package = args.examples / f"{model}.tpa"
            setups = [(p, n) for n in args.frontends for p in ("rest", "grpc")]
            runs: dict[str, list[dict[str, float]]] = {f"{p} fe{n}": [] for p, n in setups}
            for rep in range(args.repeat):
                for protocol, frontends in setups:  # interleaved
                    grpc = protocol == "grpc"
                    target = start_torchport(model, package, work, grpc=grpc, frontends=frontends)
                    try:
                        run = measure(target, grpc, args.duration)
                    finally:
                        target.proc.terminate()
                        target.proc.wait(60)
                    runs[f"{protocol} fe{frontends}"].append(run)
                    print(f"{model} rep {rep + 1} {protocol} fe{frontends}: {run['rps']:.0f} "
                          f"req/s, engine loop {run['main_us']:.0f} µs, engine "
                          f"{run['engine_us']:.0f} µs, front ends {run['frontends_us']:.0f} µs, "
                          f"all {run['total_us']:.0f} µs a request", flush=True)  # fmt: skip
            results[model] = {
                protocol: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                for protocol, rs in runs.items()
            }
    summary = {"concurrency": 32, "repeat": args.repeat, "duration_s": args.duration}
    args.out.write_text(json.dumps({**summary, "models": results}, indent=2))
    print("| model | protocol, front ends | req/s | CPU µs a request: engine loop | engine "
          "| front ends | all processes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for model, by_setup in results.items():
        for setup, m in by_setup.items():
            cells = [m[k] for k in ("rps", "main_us", "engine_us", "frontends_us", "total_us")]
            print(f"| {model} | {setup} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
