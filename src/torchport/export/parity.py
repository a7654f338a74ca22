"""The parity check: an export must answer like the model it came from.

Both packages run the same batches through their handlers: the package's examples, then
random inputs drawn within the signature (and within the ranges the examples show) at
several batch sizes. Every output is compared element by element, as `numpy.allclose`
does, with a tolerance per datatype; exact types (integers, booleans, bytes) must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from torchport.archive import OutputParity, Parity
from torchport.types import Array, Datatype, Signature, Tensors, TensorSpec

BATCH_SIZES = (1, 3, 8)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Float exports reorder and fuse operations: errors of a few float32 ulps per layer are
# normal; past these, the export computes something else.
TOLERANCES = {
    Datatype.FP16: Tolerance(atol=1e-2, rtol=1e-2),
    Datatype.FP32: Tolerance(atol=1e-4, rtol=1e-4),
    Datatype.FP64: Tolerance(atol=1e-8, rtol=1e-8),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)


def tolerance(datatype: Datatype, override: Tolerance | None = None) -> Tolerance:
    """The tolerance for an output (an override applies to float outputs only)."""
    if datatype not in TOLERANCES:
        return EXACT
    return override or TOLERANCES[datatype]


def parity_cases(
    signature: Signature,
    examples: Sequence[Tensors],
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
) -> list[Tensors]:
    """The examples, then one random batch per size in `batch_sizes`."""
    rng = np.random.default_rng(seed)
    cases = list(examples)
    for rows in batch_sizes:
        cases.append(
            {s.name: _random(s, rows, [e[s.name] for e in examples], rng) for s in signature.inputs}
        )
    return cases


def _random(spec: TensorSpec, rows: int, seen: list[Array], rng: np.random.Generator) -> Array:
    shape = [rows]
    for axis, size in enumerate(spec.shape[1:], start=1):
        if size >= 0:
            shape.append(size)
            continue
        known = max((a.shape[axis] for a in seen), default=4)
        # A padded axis varies per row anyway; vary it across batches too.
        shape.append(int(rng.integers(1, 2 * known + 1)) if spec.pad_value is not None else known)
    if spec.datatype is Datatype.BYTES:
        words = [w for a in seen for item in a.reshape(-1) for w in bytes(item).split()] or [b"a"]
        picks = rng.integers(0, len(words), size=(int(np.prod(shape)), 12))
        lengths = rng.integers(1, 13, size=len(picks))
        texts = [b" ".join(words[i] for i in p[:n]) for p, n in zip(picks, lengths, strict=True)]
        return np.array(texts, dtype=object).reshape(shape)
    values = np.concatenate([a.reshape(-1) for a in seen]) if seen else np.zeros(0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 1.0
    dtype = spec.datatype.numpy
    if spec.datatype is Datatype.BOOL:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        if high <= low:
            low, high = (0.0, 9.0) if not values.size else (low, low + 1)
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    if high <= low:
        low, high = low - 1.0, low + 1.0
    return rng.uniform(low, high, size=shape).astype(dtype)


def compare(
    signature: Signature,
    expected: Sequence[Tensors],
    actual: Sequence[Tensors],
    override: Tolerance | None = None,
) -> Parity:
    """Per output: the largest absolute and relative error over every case, and whether
    every element is within tolerance."""
    outputs = []
    for spec in signature.outputs:
        tol = tolerance(spec.datatype, override)
        max_abs = max_rel = 0.0
        mismatched = 0
        for want_all, have_all in zip(expected, actual, strict=True):
            want, have = want_all[spec.name], have_all[spec.name]
            if want.shape != have.shape:  # every element counts as wrong
                mismatched += max(want.size, have.size, 1)
                continue
            if want.dtype == object or have.dtype == object:
                mismatched += int(np.sum(want != have))
                continue
            w, h = want.astype(np.float64), have.astype(np.float64)
            diff = np.abs(h - w)
            if diff.size:
                max_abs = max(max_abs, float(np.nanmax(diff)))
                max_rel = max(max_rel, float(np.nanmax(diff / np.maximum(np.abs(w), 1e-12))))
            close = diff <= tol.atol + tol.rtol * np.abs(w)
            close |= (w == h) | (np.isnan(w) & np.isnan(h))  # equal infinities and NaNs agree
            mismatched += int(np.sum(~close))
        outputs.append(
            OutputParity(
                name=spec.name,
                max_abs_error=max_abs,
                max_rel_error=max_rel,
                atol=tol.atol,
                rtol=tol.rtol,
                mismatched=mismatched,
                passed=mismatched == 0,
            )
        )
    return Parity(
        passed=all(o.passed for o in outputs),
        cases=len(expected),
        batch_sizes=sorted({len(next(iter(c.values()))) for c in expected if c}),
        outputs=outputs,
    )
