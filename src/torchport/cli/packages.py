"""`torchport package`, `inspect` and `predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from torchport.cli.output import human_size, out, print_json, status
from torchport.errors import InvalidInput

Opt = typer.Option


def package_cmd(
    name: Annotated[str, Opt("--name", help="Model name (letters, digits, '.', '_', '-').")],
    out_path: Annotated[Path, Opt("-o", "--out", help="The package file to write (.tpa).")],
    model: Annotated[
        str | None, Opt("--model", help="FILE.py:FACTORY that builds the nn.Module.")
    ] = None,
    weights: Annotated[
        Path | None, Opt("--weights", help="Weights for --model (.safetensors).")
    ] = None,
    exported: Annotated[
        Path | None, Opt("--exported", help="A torch.export program (.pt2).")
    ] = None,
    torchscript: Annotated[
        Path | None, Opt("--torchscript", help="A TorchScript file (.pt).")
    ] = None,
    handler: Annotated[
        str | None, Opt("--handler", help="handler.py[:Class] with pre/post-processing.")
    ] = None,
    example: Annotated[
        Path | None, Opt("--example", help="JSON object: input name → nested list.")
    ] = None,
    signature: Annotated[
        Path | None, Opt("--signature", help="JSON signature, if not derived from the example.")
    ] = None,
    extra: Annotated[
        list[Path] | None, Opt("--extra", help="An extra file to ship (repeatable).")
    ] = None,
    max_batch_size: Annotated[
        int | None, Opt(help="Most rows in one batch (default: 8 on the CPU, 64 on a GPU).")
    ] = None,
    max_batch_delay_ms: Annotated[float | None, Opt(help="Default max batch delay.")] = None,
    workers: Annotated[int | None, Opt(help="Default number of workers.")] = None,
    max_workers: Annotated[
        int | None, Opt(help="On Ray: autoscale replicas from --workers up to this.")
    ] = None,
    max_queue: Annotated[int | None, Opt(help="Default queue bound (503 past it).")] = None,
    target_p99_ms: Annotated[
        float | None, Opt(help="A latency target: batch sizes chosen to keep p99 under it.")
    ] = None,
    worker_kind: Annotated[
        str | None, Opt(help="thread (default) or process: where batches run.")
    ] = None,
    compile: Annotated[
        bool, Opt("--compile", help="Run the model through torch.compile when loaded.")
    ] = False,
    description: Annotated[str, Opt(help="A line describing the model.")] = "",
) -> None:
    """Build a model package from code + weights, an exported program or TorchScript."""
    from torchport.packaging import package, read_example

    runtime = {
        k: v
        for k, v in {
            "max_batch_size": max_batch_size,
            "max_batch_delay_ms": max_batch_delay_ms,
            "workers": workers,
            "max_workers": max_workers,
            "max_queue": max_queue,
            "target_p99_ms": target_p99_ms,
            "worker_kind": worker_kind,
            "compile": compile or None,
        }.items()
        if v is not None
    }
    with status(f"packaging {name}"):
        manifest = package(
            name=name,
            out=out_path,
            code=model,
            weights=weights,
            exported=exported,
            torchscript=torchscript,
            handler=handler,
            example=read_example(example) if example else None,
            signature=_read_json(signature, "signature") if signature else None,
            extra_files=extra or [],
            runtime=runtime or None,
            description=description,
        )
    out.print(f"wrote {out_path} ({human_size(out_path.stat().st_size)})")
    _signature_table(manifest.signature.model_dump(mode="json"))


def inspect_cmd(
    package: Annotated[Path, typer.Argument(help="A package file (.tpa).")],
    as_json: Annotated[bool, Opt("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Verify a package (every hash) and show its manifest."""
    from torchport.archive import read_package

    manifest = read_package(package).manifest
    if as_json:
        print_json(manifest.model_dump(mode="json"))
        return
    out.print(f"[bold]{manifest.name}[/] — {manifest.description or 'no description'}")
    handler = (
        f"{manifest.handler.file}:{manifest.handler.object}" if manifest.handler else "default"
    )
    out.print(
        f"model: {manifest.model.kind.value} ({manifest.model.file})  handler: {handler}  "
        f"created: {manifest.created_at:%Y-%m-%d %H:%M} UTC  torch {manifest.torch_version}"
    )
    _signature_table(manifest.signature.model_dump(mode="json"))
    out.print(f"files: {', '.join(manifest.files)}  — all hashes verified")
    signed = package_signer(package)
    out.print(f"signed by key {signed} (not checked here: a server checks it against its "
              "trusted_keys)" if signed else "not signed")  # fmt: skip


def package_signer(package: Path) -> str | None:
    import zipfile

    from torchport.archive.signing import read_signature

    with zipfile.ZipFile(package) as zf:
        record = read_signature(zf)
    return record["key"] if record else None


def predict_cmd(
    package: Annotated[str, typer.Argument(help="A package file, or a model name with --store.")],
    input_path: Annotated[
        Path, Opt("--input", "-i", help="JSON object: input name → nested list ('-' for stdin).")
    ],
    store: Annotated[
        str | None, Opt(help="Look the model up in this store (a directory or s3://…).")
    ] = None,
    version: Annotated[int | None, Opt(help="A version (default: the model's default).")] = None,
) -> None:
    """Run one prediction in process and print the outputs as JSON."""
    from torchport.embed import load
    from torchport.tensors import json_to_arrays, to_jsonable

    data = _read_json(None if str(input_path) == "-" else input_path, "input")
    if not isinstance(data, dict):
        raise InvalidInput("--input must hold a JSON object from input name to a nested list")
    with load(package, store=store, version=version) as model:
        outputs = model.predict(json_to_arrays(data, model.signature))
    print_json({k: to_jsonable(v) for k, v in outputs.items()})


def _read_json(path: Path | None, what: str) -> Any:
    try:
        text = sys.stdin.read() if path is None else path.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"{what} file {path} does not exist", field=what) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {what} file {path}: {exc}", field=what) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", field=what) from None


def _signature_table(signature: dict[str, Any]) -> None:
    table = Table("", "name", "datatype", "shape", box=None, pad_edge=False)
    for kind in ("inputs", "outputs"):
        for spec in signature[kind]:
            table.add_row(kind[:-1], spec["name"], spec["datatype"], str(spec["shape"]))
    out.print(table)
