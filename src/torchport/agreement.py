"""Whether two runs of a model agree: the one comparison of outputs torchport makes, with
one tolerance per datatype, wherever it compares (an upload's examples against their
recorded outputs, an export against its source model, two versions on recent traffic), so
a package that passes one check cannot fail another.

Float outputs agree element by element as `numpy.allclose` has it (|have - want| <=
atol + rtol x |want|; equal infinities and NaNs agree); exact types (integers, booleans,
bytes) must be equal; outputs of different shapes disagree everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from torchport.types import Array, Datatype, Tensors, TensorSpec


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Float exports and batches of another size reorder and fuse operations: errors of a few
# float32 ulps per layer are normal; past these, the model computes something else.
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


@dataclass
class Difference:
    """How one output differs between two runs, over every case added."""

    name: str
    tolerance: Tolerance
    max_abs: float = 0.0
    max_rel: float = 0.0
    """The largest |have - want| / |want| (|want| at least 1e-12)."""
    elements: int = 0
    """Elements beyond the tolerance (every element of an output of another shape)."""
    rows: int = 0
    """Rows (along axis 0) with any element beyond the tolerance."""
    shape: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    """The first (have, want) shapes that differed, if any did."""

    @property
    def agrees(self) -> bool:
        return self.elements == 0

    def add(self, want: Array, have: Array | None) -> None:
        """Compare one case's output: `want` (the reference) and `have` (None: the other
        run has no such output, so it disagrees everywhere)."""
        if have is None:
            have = np.empty((0,), dtype=want.dtype)
        if want.shape != have.shape:
            self.elements += max(want.size, have.size, 1)
            self.rows += max(len(want) if want.ndim else 1, len(have) if have.ndim else 1)
            self.shape = self.shape or (have.shape, want.shape)
            return
        if want.dtype == object or have.dtype == object or self.tolerance == EXACT:
            wrong = np.asarray(want != have)
        else:
            w, h = want.astype(np.float64), have.astype(np.float64)
            diff = np.abs(h - w)
            if diff.size:
                self.max_abs = max(self.max_abs, float(np.nanmax(diff)))
                rel = diff / np.maximum(np.abs(w), 1e-12)
                self.max_rel = max(self.max_rel, float(np.nanmax(rel)))
            close = diff <= self.tolerance.atol + self.tolerance.rtol * np.abs(w)
            close |= (w == h) | (np.isnan(w) & np.isnan(h))
            wrong = ~close
        self.elements += int(np.sum(wrong))
        if wrong.ndim:
            self.rows += int(np.sum(np.any(wrong.reshape(len(wrong), -1), axis=1)))
        else:
            self.rows += int(bool(wrong))

    def describe(self) -> str:
        """What differs, in words (for a refusal)."""
        if self.shape is not None:
            have, want = self.shape
            return f"output '{self.name}': shape {list(have)}, expected {list(want)}"
        if self.tolerance == EXACT:
            return f"output '{self.name}': values differ"
        return (
            f"output '{self.name}': max abs error {self.max_abs:.3g} over tolerance "
            f"(atol={self.tolerance.atol:g}, rtol={self.tolerance.rtol:g})"
        )


def compare_outputs(
    outputs: Sequence[TensorSpec],
    expected: Sequence[Tensors],
    actual: Sequence[Tensors],
    override: Tolerance | None = None,
) -> list[Difference]:
    """Per declared output, how `actual` differs from `expected`, case by case."""
    found = []
    for spec in outputs:
        difference = Difference(spec.name, tolerance(spec.datatype, override))
        for want, have in zip(expected, actual, strict=True):
            difference.add(want[spec.name], have.get(spec.name))
        found.append(difference)
    return found
