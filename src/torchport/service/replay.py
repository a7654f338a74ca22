"""Recorded requests (`recording.py`) run again against a version and its answers compared
with the ones the default gave when they were recorded, by the measures a rollout uses (per
output: argmax, cosine or allclose agreement, the largest differences), with the version's
error rate and latency. `torchport traffic replay` runs them in process or on a server; the
management API, on the server's own loaded version."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchport.agreement import TOLERANCES, Tolerance
from torchport.errors import InvalidInput, NotFound
from torchport.service.rollouts import OutputAgreement, measures
from torchport.tensors import to_array
from torchport.types import Datatype, Signature, Tensors

Run = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class Record:
    inputs: Tensors
    outputs: Tensors
    redacted: bool


def recorded_files(store_root: Path, model: str) -> list[Path]:
    """The model's recordings in a store, oldest first."""
    files = sorted((store_root / "recordings" / model).glob("*.jsonl"))
    if not files:
        raise NotFound(
            f"no recorded traffic of '{model}' in {store_root} (start a recording: "
            f"PUT /models/{model}/recording)",
            field="model",
        )
    return files


def read_records(paths: Iterable[Path]) -> Iterator[Record]:
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {path}: {exc}", field="from") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                yield Record(
                    _tensors(doc["inputs"]),
                    _tensors(doc["outputs"]),
                    any(t.get("redacted") for t in doc["inputs"].values()),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidInput(
                    f"{path.name}:{number} is not a recorded request ({exc})", field="from"
                ) from None


def _tensors(described: dict[str, Any]) -> Tensors:
    out: Tensors = {}
    for name, tensor in described.items():
        datatype = Datatype(tensor["datatype"])
        shape = [int(d) for d in tensor["shape"]]
        if tensor.get("redacted"):
            out[name] = np.zeros(shape, dtype=datatype.numpy)
            continue
        out[name] = to_array(tensor["data"], datatype, name=name).reshape(shape)
    return out


def replay(model: str, version: int, records: Iterable[Record], run: Run, signature: Signature,
           outputs: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run every record through `run` and compare with its recorded answers."""
    chosen = measures(signature, outputs or {})
    agreement = {
        s.name: OutputAgreement(chosen[s.name], TOLERANCES.get(s.datatype, Tolerance(0.0, 0.0)))
        for s in signature.outputs
    }
    seen = replayed = redacted = errors = 0
    first_error: str | None = None
    latencies: list[float] = []
    for record in records:
        seen += 1
        if record.redacted:
            redacted += 1
            continue
        started = time.perf_counter()
        try:
            got = run(record.inputs)
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            continue
        latencies.append(time.perf_counter() - started)
        replayed += 1
        for name, figures in agreement.items():
            if name in record.outputs and name in got:
                figures.add(np.asarray(record.outputs[name]), np.asarray(got[name]), 0.99)
    times = np.array(latencies) * 1000
    shares = [a.agreeing / a.rows for a in agreement.values() if a.rows]
    return {
        "model": model,
        "version": version,
        "records": seen,
        "replayed": replayed,
        "skipped_redacted": redacted,
        "errors": errors,
        "error_rate": errors / max(1, seen - redacted),
        "p50_ms": float(np.percentile(times, 50)) if times.size else None,
        "p99_ms": float(np.percentile(times, 99)) if times.size else None,
        "agreement": min(shares) if shares else None,
        "outputs": {name: a.figures() for name, a in agreement.items()},
        "first_error": first_error,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report, for a terminal."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    lines = [
        f"{report['model']} v{report['version']}: {report['replayed']} of {report['records']} "
        f"recorded requests replayed ({report['skipped_redacted']} redacted, "
        f"{report['errors']} errors, error rate {report['error_rate']:.2%}); "
        f"p50 {ms(report['p50_ms'])}, p99 {ms(report['p99_ms'])}",
    ]
    if report.get("first_error"):
        lines.append(f"  first error: {report['first_error']}")
    for name, o in report["outputs"].items():
        shown = "-" if o["agreement"] is None else f"{o['agreement']:.2%}"
        lines.append(
            f"  {name} ({o['measure']}): agreement {shown} over {o['rows']} rows, "
            f"max abs diff {o['max_abs_diff']:.3g}, max rel diff {o['max_rel_diff']:.3g}"
        )
    return lines
