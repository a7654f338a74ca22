"""What a rollout and a recording cost the default's traffic.

    .venv/bin/python benchmarks/rollout_overhead.py [--models mlp minilm] [--repeat 3]

One `torchport serve` per model with two versions of the same package (v1 the default,
v2 the candidate); wrk (1 thread, c=32, `--duration` s) against the default's route in
five settings, set live through the management API and interleaved per repetition:
`none`; `canary` (20 % answered by v2, the default running those requests again off the
request path for comparison); `canary-0.1%` (the routing alone); `shadow` (100 % also
sent to v2 after the default answers); `recording` (every request recorded, no rate
limit). Each figure: throughput, p50/p99, and
the server's CPU seconds per request (user + system, all its threads) — the shadow's own
CPU is its CPU per request over `none`'s. Medians; results in
benchmarks/results/rollout_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_cost import cpu_seconds
from benchmarks.serving import ROOT, TOKEN, Started, machine, start_torchport, stop, wrk

SETTINGS: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = {
    "none": (None, None),
    "canary": ({"candidate": 2, "mode": "canary", "share": 0.2, "rules": None}, None),
    "canary-0.1%": ({"candidate": 2, "mode": "canary", "share": 0.001, "rules": None}, None),
    "shadow": ({"candidate": 2, "mode": "shadow", "share": 1.0, "rules": None}, None),
    "recording": (None, {"share": 1.0, "max_per_second": 100_000}),
}


def call(mgmt: str, method: str, path: str, body: Any = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{mgmt}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 404:  # stopping what is not running
            raise


def management_url(target: Started) -> str:
    command = Path(f"/proc/{target.proc.pid}/cmdline").read_bytes().split(b"\0")
    port = command[command.index(b"--management-port") + 1].decode()
    return f"http://127.0.0.1:{port}"


def measure(target: Started, model: str, setting: str, duration: float) -> dict[str, float]:
    mgmt = management_url(target)
    rollout, recording = SETTINGS[setting]
    if rollout is not None:
        call(mgmt, "POST", f"/models/{model}/rollout", rollout)
    if recording is not None:
        call(mgmt, "PUT", f"/models/{model}/recording", recording)
    try:
        wrk(target, 32, 1)  # warm-up in this setting
        before = cpu_seconds(target.proc.pid)["total"]
        result = wrk(target, 32, duration)
        after = cpu_seconds(target.proc.pid)["total"]
    finally:
        if rollout is not None:
            call(mgmt, "POST", f"/models/{model}/rollout/stop")
        if recording is not None:
            call(mgmt, "DELETE", f"/models/{model}/recording")
    result["cpu_us_per_request"] = (after - before) / max(1.0, result["rps"] * duration) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "minilm"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/rollout_overhead.json"
    )
    args = parser.parse_args()
    from torchport.examples import build_examples

    missing = tuple(m for m in args.models if not (args.examples / f"{m}.tpa").exists())
    if missing:
        build_examples(args.examples, missing)
    results: dict[str, Any] = {"machine": machine(), "duration_s": args.duration, "models": {}}
    with tempfile.TemporaryDirectory(prefix="torchport-rollout-bench-") as tmp:
        for model in args.models:
            package = args.examples / f"{model}.tpa"
            target = start_torchport(model, package, Path(tmp))
            try:
                mgmt = management_url(target)
                request = urllib.request.Request(
                    f"{mgmt}/models/{model}", data=package.read_bytes(), method="POST",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )  # fmt: skip
                urllib.request.urlopen(request, timeout=300).read()  # v2, the same model
                runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
                for _ in range(args.repeat):
                    for setting in SETTINGS:
                        runs[setting].append(measure(target, model, setting, args.duration))
            finally:
                stop(target.proc)
            summary = {}
            for setting, measured in runs.items():
                summary[setting] = {
                    key: round(statistics.median(r[key] for r in measured), 3)
                    for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "errors")
                }
            base = summary["none"]
            for row in summary.values():
                row["rps_vs_none"] = round(row["rps"] / base["rps"], 3)
                row["cpu_us_over_none"] = round(
                    row["cpu_us_per_request"] - base["cpu_us_per_request"], 1
                )
            results["models"][model] = {"settings": summary, "runs": runs}
            for setting, row in summary.items():
                print(
                    f"{model:7} {setting:9} {row['rps']:9.1f} req/s ({row['rps_vs_none']:.2f}x)"
                    f"  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                    f"CPU {row['cpu_us_per_request']:7.1f} us/req (+{row['cpu_us_over_none']})"
                )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
