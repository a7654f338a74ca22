"""Packing requests into one batch along axis 0 and splitting its outputs back by row.

Inputs whose signature declares a `pad_value` may differ in length on their dynamic axes:
they are padded to the longest in the batch, and outputs declared `padded_like` such an
input are cut back to each request's own lengths.
"""

from __future__ import annotations

import numpy as np

from torchport.errors import TorchportError
from torchport.types import Signature, Tensors, batch_size

Key = tuple[tuple[str, tuple[int, ...], str], ...]


class Packing:
    """How one signature's requests are packed together and split apart."""

    def __init__(self, signature: Signature) -> None:
        self._pad = {s.name: s.pad_value for s in signature.inputs if s.pad_value is not None}
        self._trim = {s.name: (s.padded_like, s.shape) for s in signature.outputs if s.padded_like}

    def key(self, inputs: Tensors) -> Key:
        """Requests with equal keys can share a batch: equal non-batch shapes, except on
        padded inputs (whose static axes the signature has already checked)."""
        return tuple(
            (n, (-1,) * (a.ndim - 1) if n in self._pad else a.shape[1:], a.dtype.str)
            for n, a in sorted(inputs.items())
        )

    def pack(self, requests: list[Tensors]) -> Tensors:
        """One batch of the requests' inputs (which share a key), in order."""
        if len(requests) == 1:
            return requests[0]
        return {
            n: _stack([inputs[n] for inputs in requests], self._pad.get(n)) for n in requests[0]
        }

    def rows(self, outputs: Tensors, inputs: Tensors, start: int, total: int) -> Tensors:
        """The rows of a batch's outputs that belong to the request with `inputs`, packed
        at row `start` of `total`, padding cut back to its own lengths."""
        rows = batch_size(inputs)
        out: Tensors = {}
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise TorchportError(
                    f"output '{name}' has no batch axis of {total} rows; it cannot be batched"
                )
            index: list[slice] = [slice(start, start + rows)]
            if name in self._trim:
                source, declared = self._trim[name]
                lengths = inputs[source].shape
                index += [
                    slice(0, lengths[axis] if declared[axis] == -1 else None)
                    for axis in range(1, min(array.ndim, len(lengths)))
                ]
            out[name] = array[tuple(index)]
        return out


def _stack(arrays: list[np.ndarray], pad_value: float | None) -> np.ndarray:
    """Concatenate along axis 0, first padding every other axis to the longest."""
    longest = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays), strict=True))
    if pad_value is None or all(a.shape[1:] == longest for a in arrays):
        return np.concatenate(arrays)
    out = np.full((sum(len(a) for a in arrays), *longest), pad_value, dtype=arrays[0].dtype)
    start = 0
    for a in arrays:
        out[(slice(start, start + len(a)), *(slice(0, n) for n in a.shape[1:]))] = a
        start += len(a)
    return out
