"""`torchport bench`: how fast a package runs on one device of this machine (the CPU or a
GPU) in each runtime that works for it there: eager, eager + `torch.compile`, TorchScript,
`torch.export`, AOTInductor (compiled for that device), ONNX Runtime (its CUDA provider on
a GPU). Each export passes the parity check on that device first; each runtime runs the
package's handler, as the server does, in this process with torch's own thread settings.
The fastest is the choice for that device: run it once per device to choose for each.

Latency: p50/p99 of single-row calls. Throughput: rows per second at the best batch size.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.archive import read_package, unpack_package, write_package
from torchport.errors import InvalidInput, ModelLoadError, TorchportError
from torchport.export.exporting import ParityFailed, export_device, export_package
from torchport.export.targets import FIXED_PRECISION, ExportFailed, Target
from torchport.runtime import LocalRunner, example_inputs, open_runner
from torchport.runtime.devices import Device
from torchport.runtime.precision import DTYPES, Precision
from torchport.types import Tensors

RUNTIMES = ("eager", "compiled", "torchscript", "exported", "aoti", "onnx")
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES = (1, 8, 32)

Progress = Callable[[str, int], None]
"""Called with what runs now and how many steps are done."""


@dataclass(frozen=True)
class RuntimeResult:
    runtime: str
    ok: bool
    reason: str = ""
    """Why it did not run (the export failed, or its parity)."""
    parity_max_abs_error: float | None = None
    load_seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rows_per_s: float = 0.0
    best_batch_size: int = 0


@dataclass(frozen=True)
class BenchReport:
    package: str
    torch_threads: int
    seconds_per_measure: float
    results: list[RuntimeResult]
    device: str = "cpu"
    precision: Precision = "fp32"

    @property
    def fastest(self) -> RuntimeResult | None:
        ok = [r for r in self.results if r.ok]
        return max(ok, key=lambda r: r.rows_per_s) if ok else None

    def to_dict(self) -> dict[str, Any]:
        fastest = self.fastest
        return {
            "package": self.package,
            "device": self.device,
            "precision": self.precision,
            "torch_threads": self.torch_threads,
            "seconds_per_measure": self.seconds_per_measure,
            "fastest": fastest.runtime if fastest else None,
            "results": [asdict(r) for r in self.results],
        }


def steps(runtimes: Sequence[str], batch_sizes: Sequence[int]) -> int:
    """The progress total: per runtime, preparing it, latency, and each batch size."""
    return len(runtimes) * (2 + len(batch_sizes))


def bench_package(
    package: Path,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    seconds: float = 1.0,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    work: Path | None = None,
    device: str = "cpu",
    precision: Precision | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Measure every runtime in `runtimes` on `device` (`cpu`, `cuda`, `cuda:N`); exports
    are written under `work` (kept, so the fastest can be saved) or a temporary directory.

    `precision` (default: the package's runtime setting) applies to the runtimes that run
    a torch module (eager, compiled, TorchScript, exported); AOTInductor and ONNX run in
    float32 and are left out in another precision."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise InvalidInput(
            f"unknown runtime {unknown[0]!r} (choose from {', '.join(RUNTIMES)})", field="runtime"
        )
    if precision is not None and precision not in DTYPES:
        raise InvalidInput(f"precision {precision!r}: choose fp32, fp16 or bf16", field="precision")
    on = export_device(device)
    manifest = read_package(package).manifest
    if not manifest.examples:
        raise InvalidInput("bench needs a package with an example to run", field="package")
    precision = precision or manifest.runtime.precision
    row = {k: v[:1] for k, v in example_inputs(manifest, 0).items()}
    done = 0
    say = progress or (lambda _m, _n: None)
    results = []
    with tempfile.TemporaryDirectory(prefix="torchport-bench-") as tmp:
        where = work or Path(tmp)
        for runtime in runtimes:
            say(f"{runtime}: preparing", done)
            try:
                runner, load_seconds, error = _prepare(package, runtime, where, on, precision)
            except (ExportFailed, ParityFailed, ModelLoadError) as exc:
                results.append(RuntimeResult(runtime, ok=False, reason=str(exc)))
                done += 2 + len(batch_sizes)
                continue
            done += 1
            try:
                say(f"{runtime}: latency at batch 1", done)
                p50, p99 = _latency(runner, row, seconds)
                done += 1
                best, best_size = 0.0, 0
                for size in batch_sizes:
                    say(f"{runtime}: throughput at batch {size}", done)
                    rate = _rows_per_s(runner, _tile(row, size), seconds)
                    if rate > best:
                        best, best_size = rate, size
                    done += 1
            finally:
                runner.close()
            results.append(
                RuntimeResult(runtime, True, "", error, load_seconds, p50, p99, best, best_size)
            )
    say("done", done)
    return BenchReport(str(package), torch.get_num_threads(), seconds, results, str(on), precision)


def exported_path(work: Path, runtime: str) -> Path:
    return work / f"{runtime}.tpa"


def _prepare(
    package: Path, runtime: str, work: Path, device: Device, precision: Precision
) -> tuple[LocalRunner, float, float | None]:
    """The runner of `runtime` on `device` (exporting first when it is an export), its
    load time, and the export's largest parity error."""
    if precision != "fp32" and runtime in FIXED_PRECISION:
        raise ModelLoadError(f"{runtime} runs in the precision it was exported in (fp32)")
    error: float | None = None
    path = package
    if runtime not in ("eager", "compiled"):
        result = export_package(
            package, Target(runtime), exported_path(work, runtime), device=str(device)
        )
        error = max((o.max_abs_error for o in result.parity.outputs), default=0.0)
        path = result.out
    started = time.perf_counter()
    runner = open_runner(path, compile=runtime == "compiled", device=device, precision=precision)
    return runner, time.perf_counter() - started, error


def _tile(row: Tensors, size: int) -> Tensors:
    return {k: np.concatenate([v] * size) for k, v in row.items()}


def _latency(runner: LocalRunner, row: Tensors, seconds: float) -> tuple[float, float]:
    for _ in range(3):
        runner.predict(row)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        started = time.perf_counter()
        runner.predict(row)
        times.append(time.perf_counter() - started)
    times.sort()
    return 1000 * times[len(times) // 2], 1000 * times[min(len(times) - 1, int(len(times) * 0.99))]


def _rows_per_s(runner: LocalRunner, batch: Tensors, seconds: float) -> float:
    rows = len(next(iter(batch.values())))
    runner.predict(batch)  # a first call at a new size may allocate or specialise
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or calls < 3:
        runner.predict(batch)
        calls += 1
    return calls * rows / (time.perf_counter() - started)


def save_fastest(package: Path, report: BenchReport, work: Path, out: Path) -> str:
    """Write the package as it runs fastest on the report's device: the export that was
    fastest (it passed its parity check there), the original with `compile` on, or the
    original as it is; with runtime settings `device` (the device's kind: `cuda` on any
    GPU) and `precision` as measured."""
    fastest = report.fastest
    if fastest is None:
        raise TorchportError("no runtime ran: nothing to save")
    source = package
    settings: dict[str, Any] = {}
    if report.device != "cpu":
        settings["device"] = report.device.partition(":")[0]  # any GPU of the server's
    if fastest.runtime in ("eager", "compiled"):
        settings["compile"] = fastest.runtime == "compiled"
    else:
        source = exported_path(work, fastest.runtime)
    if fastest.runtime not in FIXED_PRECISION:
        settings["precision"] = report.precision
    with tempfile.TemporaryDirectory(prefix="torchport-save-") as tmp:
        files_dir = Path(tmp) / "files"
        manifest = unpack_package(source, files_dir).manifest
        runtime = manifest.runtime.model_copy(update=settings)
        files = {name: files_dir / name for name in manifest.files}
        write_package(out, manifest.model_copy(update={"runtime": runtime}), files)
    return fastest.runtime
