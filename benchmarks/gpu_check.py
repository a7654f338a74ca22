"""The GPU path, end to end, in one short run: placement, precision, parity with the CPU,
out-of-memory handling, serving, and minilm's throughput on the device.

    python benchmarks/gpu_check.py [--device cuda] [--out benchmarks/results/gpu_check.json]

Meant for a machine with a GPU (the `device` tool); `--device cpu` runs the same steps on
the CPU to check the script itself. Steps, each reported pass/fail with its figures:

1. the device as torch and torchport see it (`visible_devices`, `device_figures`);
2. `mlp` and `digits` (and `minilm` where its package is at hand) loaded on the device in
   fp32, fp16 and bf16: answers against the CPU's within that precision's tolerance;
3. a batch too large for the device's memory: 503 naming it, then smaller batches served;
4. in-process throughput of `minilm` on the device at batch sizes 1 to 128 (its best batch);
5. `torchport bench` of `mlp` on the device: every runtime, AOTInductor compiled for it and
   ONNX Runtime on its CUDA provider (or the reason it cannot), each export's parity
   checked there, and the fastest chosen for that device;
6. a server with `TORCHPORT_DEVICE` set: `/metrics` shows the version's device and the
   GPU's memory, and `minilm` served at 1, 8, 32 and 128 concurrent connections (wrk
   where installed, else an asyncio client, which saturates first; the report says which).

Results: one JSON file; the script exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torchport  # noqa: E402
from torchport.runtime.devices import device_figures, visible_devices  # noqa: E402
from torchport.runtime.precision import PRECISION_TOLERANCES  # noqa: E402

TEXTS = ["a sentence to embed", "another one, a little longer than the first", "short"]


def inputs(name: str, rows: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    if name == "mlp":
        return {"input": rng.standard_normal((rows, 32)).astype(np.float32)}
    if name == "digits":
        return {"input": rng.uniform(0, 1, (rows, 1, 8, 8)).astype(np.float32)}
    return {"text": np.array([TEXTS[i % len(TEXTS)].encode() for i in range(rows)], dtype=object)}


def parity(packages: dict[str, Path], device: str) -> list[dict[str, Any]]:
    results = []
    for name, package in packages.items():
        with torchport.load(package) as cpu:
            batch = inputs(name, 8)
            want = cpu.predict(batch)
        for precision in ("fp32", "fp16", "bf16"):
            started = time.perf_counter()
            with torchport.load(package, device=device, precision=precision) as placed:
                loaded = time.perf_counter() - started
                got = placed.predict(batch)
            tol = PRECISION_TOLERANCES.get(precision)
            atol = rtol = tol.atol if tol else 1e-4
            worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
            ok = all(np.allclose(got[k], want[k], atol=atol, rtol=rtol) for k in want)
            results.append(
                {"model": name, "precision": precision, "ok": ok, "max_abs_diff": worst,
                 "load_s": round(loaded, 2)}
            )  # fmt: skip
    return results


def out_of_memory(mlp: Path, device: str) -> dict[str, Any]:
    """Ask the device for more than it may use, through a batcher: 503, then it serves.

    The process may use 1 GiB of the GPU for this step (`set_per_process_memory_fraction`),
    and the batch needs 2 GiB there: the host holds it easily, the device refuses it."""
    from torchport.errors import Unavailable
    from torchport.runtime import Batcher, BatchPolicy, open_runner
    from torchport.runtime.devices import Device

    if not device.startswith("cuda"):
        return {"ok": True, "skipped": "no GPU"}
    import torch

    placed = Device.parse(f"{device}:0" if ":" not in device else device)
    index = placed.index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2**30 / total, index)
    try:
        runner = open_runner(mlp, device=placed)
        batcher = Batcher(runner, BatchPolicy(max_batch_size=1 << 30, workers=1))
        rows = 2**31 // (32 * 4)
        message = ""
        try:
            asyncio.run(batcher.predict({"input": np.zeros((rows, 32), np.float32)}))
            refused = False
        except Unavailable as exc:
            message = str(exc)
            refused = "ran out of memory" in message
        served = asyncio.run(batcher.predict({"input": np.zeros((4, 32), np.float32)}))
        batcher.close()
        runner.close()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()
    ok = refused and served["output"].shape[0] == 4
    return {"ok": ok, "rows_asked": rows, "answer": message}


def best_batch(minilm: Path, device: str) -> dict[str, Any]:
    figures = {}
    with torchport.load(minilm, device=device) as model:
        for rows in (1, 8, 32, 64, 128):
            batch = inputs("minilm", rows)
            model.predict(batch)  # warm
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < 2.0:
                model.predict(batch)
                done += rows
            figures[rows] = round(done / (time.perf_counter() - started), 1)
    best = max(figures, key=lambda r: figures[r])
    return {"rows_per_s": figures, "best_batch": best, "best_rows_per_s": figures[best]}


def exports(mlp: Path, device: str, tmp: Path) -> dict[str, Any]:
    """`torchport bench` on the device: which runtime is fastest there, each export checked."""
    from torchport.export.bench import bench_package

    started = time.perf_counter()
    report = bench_package(mlp, device=device, seconds=0.3, batch_sizes=(1, 8, 32, 128),
                           work=tmp)  # fmt: skip
    results = report.to_dict()
    ran = {r["runtime"]: r for r in results["results"]}
    # The checks that matter on a GPU: eager and AOTInductor compiled for it both ran.
    ok = ran["eager"]["ok"] and ran["aoti"]["ok"]
    return {"ok": ok, "seconds": round(time.perf_counter() - started, 1), **results}


def served(packages: dict[str, Path], device: str, tmp: Path) -> dict[str, Any]:
    from tests.e2e.server import ServerProcess, upload

    server = ServerProcess(tmp / "store", TORCHPORT_DEVICE=device)
    server.store.parent.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        for name, package in packages.items():
            upload(server, package, name)
        import httpx

        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        placed = [
            line for line in metrics.splitlines() if line.startswith("torchport_version_info")
        ]
        gpu = [line for line in metrics.splitlines() if line.startswith("torchport_gpu_")]
        table = {}
        if "minilm" in packages:
            for connections in (1, 8, 32, 128):
                table[connections] = load(server.url, connections)
        return {"version_info": placed, "gpu_metrics": gpu[:8], "minilm_served": table}
    finally:
        server.stop()


def load(url: str, connections: int, seconds: float = 6.0) -> dict[str, Any]:
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": [TEXTS[0]]}]})  # fmt: skip
    target = f"{url}/v2/models/minilm/infer"
    if shutil.which("wrk"):
        script = ROOT / "benchmarks" / "wrk_post.lua"
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(body)
        done = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), target],
            capture_output=True, text=True, check=True,
            env={**os.environ, "BODY_FILE": f.name, "CONTENT_TYPE": "application/json"},
        )  # fmt: skip
        os.unlink(f.name)
        rate = next(line for line in done.stdout.splitlines() if "Requests/sec" in line)
        return {"client": "wrk", "req_per_s": float(rate.split()[-1])}
    import httpx

    async def run() -> int:
        count = 0
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> None:
                nonlocal count
                while time.monotonic() < deadline:
                    answer = await client.post(
                        target, content=body, headers={"Content-Type": "application/json"}
                    )
                    count += answer.status_code == 200

            await asyncio.gather(*(one() for _ in range(connections)))
        return count

    count = asyncio.run(run())
    return {"client": "asyncio (saturates first)", "req_per_s": round(count / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--examples", type=Path, default=ROOT / "build" / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.json")
    parser.add_argument("--skip-exports", action="store_true", help="Leave out step 5.")
    args = parser.parse_args()
    packages = {
        name: args.examples / f"{name}.tpa"
        for name in ("mlp", "digits", "minilm")
        if (args.examples / f"{name}.tpa").exists()
    }
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "devices": [vars(d) for d in visible_devices()],
        "device_figures": [vars(d) for d in device_figures()],
        "packages": sorted(packages),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["parity"] = parity(packages, args.device)
        if "mlp" in packages:
            report["out_of_memory"] = out_of_memory(packages["mlp"], args.device)
        if "minilm" in packages:
            report["in_process"] = best_batch(packages["minilm"], args.device)
        if "mlp" in packages and not args.skip_exports:
            report["exports"] = exports(packages["mlp"], args.device, Path(tmp))
        report["served"] = served(packages, args.device, Path(tmp))
    failed = [p for p in report["parity"] if not p["ok"]]
    for step in ("out_of_memory", "exports"):
        if not report.get(step, {"ok": True})["ok"]:
            failed.append(step)
    report["ok"] = not failed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    sys.exit(0 if not failed else 1)


if __name__ == "__main__":
    main()
