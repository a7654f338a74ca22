"""The parity check: an export must answer like the model it came from.

Both packages run the same batches through their handlers: the package's examples, then
random inputs drawn within the signature (and within the ranges the examples show) at
several batch sizes. Every output is compared as everywhere in torchport
(`torchport.agreement`): element by element with a tolerance per datatype; exact types
(integers, booleans, bytes) must match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from torchport.agreement import Tolerance, compare_outputs
from torchport.archive import OutputParity, Parity
from torchport.types import Array, Datatype, Signature, Tensors, TensorSpec

BATCH_SIZES = (1, 3, 8)


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
    every element is within tolerance (`torchport.agreement`)."""
    outputs = [
        OutputParity(
            name=d.name,
            max_abs_error=d.max_abs,
            max_rel_error=d.max_rel,
            atol=d.tolerance.atol,
            rtol=d.tolerance.rtol,
            mismatched=d.elements,
            passed=d.agrees,
        )
        for d in compare_outputs(signature.outputs, expected, actual, override)
    ]
    return Parity(
        passed=all(o.passed for o in outputs),
        cases=len(expected),
        batch_sizes=sorted({len(next(iter(c.values()))) for c in expected if c}),
        outputs=outputs,
    )
