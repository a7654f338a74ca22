"""`torchport export`: the same package with its model exported, checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from torchport.cli.output import err, human_size, out, print_json, status
from torchport.errors import InvalidInput

Opt = typer.Option
TARGETS = ("torchscript", "exported", "aoti", "onnx")


def export_cmd(
    package: Annotated[Path, typer.Argument(help="The package to export (.tpa).")],
    to: Annotated[str, Opt("--to", help="torchscript, exported, aoti or onnx.")],
    out_path: Annotated[
        Path | None, Opt("-o", "--out", help="The package to write (default: NAME.TARGET.tpa).")
    ] = None,
    check: Annotated[
        bool, Opt("--check", help="Print the parity report for every output.")
    ] = False,
    atol: Annotated[
        float | None, Opt(help="Absolute tolerance for float outputs (default per dtype).")
    ] = None,
    rtol: Annotated[
        float | None, Opt(help="Relative tolerance for float outputs (default per dtype).")
    ] = None,
    keep_failed: Annotated[
        bool,
        Opt("--keep-failed", help="Write an export whose parity fails (servers refuse it)."),
    ] = False,
    write_inputs: Annotated[
        Path | None,
        Opt(
            "--write-inputs",
            help="Also write the model's inputs for the first example as a tensors file "
            "(what examples/cpp's torchport-run reads).",
        ),
    ] = None,
    device: Annotated[
        str,
        Opt(
            help="Where the export will run: cpu, cuda or cuda:N. AOTInductor compiles for "
            "it; parity is checked there.",
        ),
    ] = "cpu",
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a package's model (TorchScript, torch.export, AOTInductor, ONNX) into a new
    package with the same handler, and check that it answers like the original."""
    from torchport.export import Tolerance, export_package

    if to not in TARGETS:
        raise InvalidInput(f"--to {to!r}: choose one of {', '.join(TARGETS)}", field="to")
    if not package.is_file():
        raise InvalidInput(f"package {package} does not exist", field="package")
    if (atol is None) != (rtol is None):
        raise InvalidInput("give --atol and --rtol together", field="atol")
    if atol is not None and rtol is not None and (atol < 0 or rtol < 0):
        raise InvalidInput("tolerances must be zero or more", field="atol")
    tolerance = Tolerance(atol, rtol) if atol is not None and rtol is not None else None
    target = out_path or package.with_name(f"{package.stem}.{to}.tpa")
    with status(f"exporting {package.name} to {to}") as say:
        result = export_package(
            package,
            to,
            target,
            tolerance=tolerance,
            keep_failed=keep_failed,
            device=device,
            progress=say,
        )
    parity = result.parity
    if write_inputs is not None:
        from torchport.export.tensor_file import format_tensors

        named = [(f"input_{i}", a) for i, a in enumerate(result.example_args)]
        write_inputs.write_text(format_tensors(named))
    if as_json:
        print_json(
            {
                "out": str(result.out),
                "target": to,
                "device": result.manifest.export.checked_on if result.manifest.export else device,
                "export_seconds": result.export_seconds,
                "parity_seconds": result.check_seconds,
                "parity": parity.model_dump(mode="json"),
            }
        )
    else:
        size = human_size(target.stat().st_size)
        where = result.manifest.export.checked_on if result.manifest.export else device
        verdict = "passed" if parity.passed else "FAILED"
        out.print(
            f"wrote {target} ({size}): {to} export in {result.export_seconds:.1f} s, parity "
            f"{verdict} on {parity.cases} batches on {where} (batch sizes "
            f"{', '.join(map(str, parity.batch_sizes))})",
            markup=False,
        )
        if check or not parity.passed:
            table = Table("output", "max abs error", "max rel error", "atol", "rtol",
                          "mismatched", "", box=None, pad_edge=False)  # fmt: skip
            for o in parity.outputs:
                table.add_row(o.name, f"{o.max_abs_error:.3g}", f"{o.max_rel_error:.3g}",
                              f"{o.atol:.3g}", f"{o.rtol:.3g}", str(o.mismatched),
                              "ok" if o.passed else "FAILED")  # fmt: skip
            out.print(table)
    if not parity.passed:
        err.print("error: parity failed: servers will refuse this package", highlight=False)
        raise typer.Exit(1)
