"""The physical limit: a package's runner called directly in this process, no server.

    .venv/bin/python benchmarks/in_process.py build/examples/minilm.tpa minilm [--seconds 2]

Prints JSON: latency at batch 1 (the better of one torch thread and one per core), and
the best throughput over batch sizes and two ways of using the cores: one caller whose
torch ops spread over every core, or one caller per core with one torch thread each.

The sweep runs each configuration for `--seconds`; its best is then run again for
`--confirm` seconds, and that second run is the figure reported (`best_batch_rows_per_s`):
the largest of 14 short runs on a noisy host is the luckiest, not the limit. The sweep's
own maximum stays in the output as `sweep_best_rows_per_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.runtime import LocalRunner, open_runner

SENTENCE = "torchport serves PyTorch models."
SIZES = (1, 2, 4, 8, 16, 32, 64)


def batch(model: str, n: int) -> dict[str, Any]:
    if model == "mlp":
        return {"input": np.full((n, 32), 0.1, np.float32)}
    return {"text": np.array([SENTENCE.encode()] * n, dtype=object)}


def latencies(runner: LocalRunner, inputs: dict[str, Any], seconds: float) -> list[float]:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        runner.predict(inputs)
        times.append(time.perf_counter() - started)
    return sorted(times)


def rows_per_s(runner: LocalRunner, inputs: dict[str, Any], callers: int, seconds: float) -> float:
    rows = [0] * callers
    n = len(next(iter(inputs.values())))
    start = time.perf_counter()

    def call(i: int) -> None:
        while time.perf_counter() - start < seconds:
            runner.predict(inputs)
            rows[i] += n

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(rows) / (time.perf_counter() - start)


def measure(package: Path, model: str, seconds: float, confirm: float) -> dict[str, float]:
    cores = len(os.sched_getaffinity(0))
    result: dict[str, float] = {}
    sweep: dict[tuple[int, int], float] = {}
    for threads in (1, cores):
        # Opened after the thread count is set: an ONNX Runtime session takes its
        # thread count when it is made, as it does in the server.
        torch.set_num_threads(threads)
        runner = open_runner(package)
        runner.predict(batch(model, 1))
        times = latencies(runner, batch(model, 1), seconds)
        p50 = times[len(times) // 2] * 1000
        if "p50_ms" not in result or p50 < result["p50_ms"]:
            result.update(
                rps=len(times) / sum(times),
                p50_ms=p50,
                p99_ms=times[int(len(times) * 0.99)] * 1000,
            )
        callers = cores // threads
        for n in SIZES:
            sweep[threads, n] = rows_per_s(runner, batch(model, n), callers, seconds)
        runner.close()
    (threads, n), most = max(sweep.items(), key=lambda item: item[1])
    torch.set_num_threads(threads)
    runner = open_runner(package)
    callers = cores // threads
    runner.predict(batch(model, n))
    result.update(
        best_batch_rows_per_s=rows_per_s(runner, batch(model, n), callers, confirm),
        best_batch_size=float(n),
        best_callers=float(callers),
        best_torch_threads=float(threads),
        sweep_best_rows_per_s=most,
    )
    runner.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("model", choices=["mlp", "minilm"])
    parser.add_argument("--seconds", type=float, default=2.0, help="each run of the sweep")
    parser.add_argument("--confirm", type=float, default=5.0, help="the best, run again")
    args = parser.parse_args()
    print(json.dumps(measure(args.package, args.model, args.seconds, args.confirm)))


if __name__ == "__main__":
    main()
