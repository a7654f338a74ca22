"""`torchport bench`: latency and throughput of a package per runtime, on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchport.cli.output import err, out, print_json

if TYPE_CHECKING:
    from torchport.runtime.precision import Precision

Opt = typer.Option


def bench_cmd(
    package: Annotated[Path, typer.Argument(help="The package to measure (.tpa).")],
    runtime: Annotated[
        list[str] | None,
        Opt("--runtime", "-r", help="Measure only this runtime (repeatable; default: all)."),
    ] = None,
    seconds: Annotated[float, Opt(help="Seconds per measurement.", min=0.05)] = 1.0,
    quick: Annotated[
        bool, Opt("--quick", help="Short runs at batch sizes 1, 8 and 32 only.")
    ] = False,
    save_fastest: Annotated[
        Path | None,
        Opt("--save-fastest", help="Write the package as it ran fastest (export or settings)."),
    ] = None,
    device: Annotated[
        str,
        Opt(help="Where to measure: cpu, cuda or cuda:N (AOTInductor compiles for it)."),
    ] = "cpu",
    precision: Annotated[
        str | None,
        Opt(help="fp32, fp16 or bf16 for the torch runtimes (default: the package's)."),
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure latency (p50/p99 at batch 1) and throughput (best batch size) of a package
    in every runtime that works for it: eager, compiled, TorchScript, exported,
    AOTInductor, ONNX Runtime (exports pass their parity check first), on one device; the
    fastest is the choice for that device (--save-fastest writes it)."""
    import tempfile

    from torchport.errors import InvalidInput
    from torchport.export import bench

    if not package.is_file():
        raise InvalidInput(f"package {package} does not exist", field="package")
    if precision is not None and precision not in ("fp32", "fp16", "bf16"):
        raise InvalidInput(f"--precision {precision!r}: choose fp32, fp16 or bf16",
                           field="precision")  # fmt: skip
    runtimes = tuple(runtime or bench.RUNTIMES)
    sizes = bench.QUICK_BATCH_SIZES if quick else bench.BATCH_SIZES
    if quick:
        seconds = min(seconds, 0.2)
    with tempfile.TemporaryDirectory(prefix="torchport-bench-") as tmp:
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("bench", total=bench.steps(runtimes, sizes))
            report = bench.bench_package(
                package,
                runtimes=runtimes,
                seconds=seconds,
                batch_sizes=sizes,
                work=Path(tmp),
                device=device,
                precision=cast("Precision | None", precision),
                progress=lambda what, done: bar.update(task, description=what, completed=done),
            )
        saved = (
            bench.save_fastest(package, report, Path(tmp), save_fastest) if save_fastest else None
        )
    if as_json:
        print_json({**report.to_dict(), "saved": str(save_fastest) if saved else None})
        return
    table = Table("runtime", "p50 ms", "p99 ms", "rows/s", "at batch", "load s",
                  "parity max abs err", box=None, pad_edge=False)  # fmt: skip
    fastest = report.fastest
    for r in report.results:
        if not r.ok:
            table.add_row(r.runtime, "—", "—", "—", "—", "—", f"not run: {r.reason[:90]}")
            continue
        mark = " (fastest)" if fastest is not None and r is fastest else ""
        table.add_row(
            r.runtime + mark,
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.rows_per_s:,.0f}",
            str(r.best_batch_size),
            f"{r.load_seconds:.1f}",
            "—" if r.parity_max_abs_error is None else f"{r.parity_max_abs_error:.2g}",
        )
    out.print(f"{package.name} on {report.device} in {report.precision} "
              f"({report.torch_threads} torch thread(s)), "
              f"{report.seconds_per_measure:g} s per measurement", markup=False)  # fmt: skip
    out.print(table)
    if saved:
        out.print(f"wrote {save_fastest}: {saved}", markup=False)
