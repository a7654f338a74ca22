"""Package size, `torchport.load` time and first-`predict` latency of each example model.

    make bench    # or: .venv/bin/python benchmarks/load_latency.py [--repeat 5]

Each run is a fresh Python process (what a user's program pays at start-up): import time
of torchport + torch, `torchport.load` (verify every hash, unpack, build the model, load
weights, warm-up on the package's example), then the first `predict` on that example.
Runs of the three models are interleaved; medians over `--repeat` runs are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, torchport
from torchport.runtime import example_inputs
t1 = time.perf_counter()
m = torchport.load(sys.argv[1])
t2 = time.perf_counter()
m.predict(example_inputs(m.manifest, 0))
t3 = time.perf_counter()
m.predict(example_inputs(m.manifest, 0))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2,
                  "second_predict_s": t4 - t3, "threads": torch.get_num_threads()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/load_latency.json")
    args = parser.parse_args()

    from torchport.examples import NAMES, build_examples

    missing = tuple(n for n in NAMES if not (args.examples / f"{n}.tpa").exists())
    if missing:
        print(f"building {', '.join(missing)} …", file=sys.stderr)
        build_examples(args.examples, missing)

    runs: dict[str, list[dict[str, float]]] = {n: [] for n in NAMES}
    for i in range(args.repeat):
        for name in NAMES:  # interleaved, so drift in machine load hits every model alike
            path = args.examples / f"{name}.tpa"
            done = subprocess.run(
                [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"run {i + 1}/{args.repeat} {name}", file=sys.stderr)

    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": _cpus(),
        },
        "repeat": args.repeat,
        "models": {},
    }
    for name in NAMES:
        size = (args.examples / f"{name}.tpa").stat().st_size
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        results["models"][name] = {"package_bytes": size, **med, "runs": runs[name]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    print(
        "| model | package | import torch+torchport | `torchport.load` "
        "| first `predict` | next `predict` |"
    )
    print("|---|---|---|---|---|---|")
    for name in NAMES:
        r = results["models"][name]
        print(
            f"| {name} | {r['package_bytes'] / 1024 / 1024:.2f} MiB "
            f"| {r['import_s'] * 1000:.0f} ms "
            f"| {r['load_s'] * 1000:.0f} ms | {r['first_predict_s'] * 1000:.1f} ms "
            f"| {r['second_predict_s'] * 1000:.1f} ms |"
        )
    print(f"\nmedians of {args.repeat} fresh processes each; written to {args.out}")


def _cpus() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                import os

                return f"{os.cpu_count()} x {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return str(platform.processor())


if __name__ == "__main__":
    main()
