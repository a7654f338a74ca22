"""Tensors and signatures as plain data.

Datatypes use the Open Inference Protocol's names (`FP32`, `INT64`, `BYTES`, ...). A shape
is a list of ints with `-1` for a dynamic axis (always the batch axis, and any other axis
the model accepts at any size). Tensors inside torchport are numpy arrays; `BYTES` tensors
are numpy object arrays of `bytes`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from torchport.errors import InvalidInput

Array = npt.NDArray[Any]
Tensors = dict[str, Array]


def version_number(raw: str, field: str = "version") -> int:
    """A version number (1, 2, 3 …) from text: ASCII digits only. `int()` alone also takes
    `' 3'`, `'1_0'` and `'٣'`, and `str.isdigit()` takes `'²'`, which `int()` refuses."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or int(raw) < 1:
        raise InvalidInput(f"{field} {raw!r} is not a version number (1, 2, 3 …)", field=field)
    return int(raw)


class Datatype(enum.StrEnum):
    """A tensor element type, named as in the Open Inference Protocol."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy(self) -> np.dtype[Any]:
        return _TO_NUMPY[self]

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> Datatype:
        if dtype.kind in "OSU":
            return cls.BYTES
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            raise InvalidInput(
                f"numpy dtype {dtype} has no Open Inference Protocol datatype"
            ) from None


_TO_NUMPY: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype(np.uint8),
    Datatype.UINT16: np.dtype(np.uint16),
    Datatype.UINT32: np.dtype(np.uint32),
    Datatype.UINT64: np.dtype(np.uint64),
    Datatype.INT8: np.dtype(np.int8),
    Datatype.INT16: np.dtype(np.int16),
    Datatype.INT32: np.dtype(np.int32),
    Datatype.INT64: np.dtype(np.int64),
    Datatype.FP16: np.dtype(np.float16),
    Datatype.FP32: np.dtype(np.float32),
    Datatype.FP64: np.dtype(np.float64),
    Datatype.BYTES: np.dtype(object),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items() if k is not Datatype.BYTES}


class TensorSpec(BaseModel):
    """One named input or output: datatype and shape (`-1` for a dynamic axis)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    datatype: Datatype
    shape: list[int] = Field(min_length=1)
    pad_value: float | None = None
    """Inputs: requests whose lengths differ on this input's dynamic axes still share a
    batch, padded with this value to the longest (e.g. 0 for token ids and their mask)."""
    padded_like: str | None = None
    """Outputs: this output's dynamic axes follow the padded input of that name, axis for
    axis; each request gets back its own lengths, the padding cut off."""
    optional: Literal[True] | None = None
    """Inputs: a request may leave this input out (requests with and without it are
    batched apart; the handler sees it only when sent)."""

    @field_validator("shape")
    @classmethod
    def _dims_are_sizes(cls, shape: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"dimensions must be positive or -1 (dynamic), got {shape}")
        return shape

    def metadata(self) -> dict[str, Any]:
        """The tensor as the Open Inference Protocol's metadata describes it."""
        return {"name": self.name, "datatype": self.datatype.value, "shape": self.shape}

    def matches_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def check(self, array: Array) -> None:
        """Raise `InvalidInput` naming this tensor unless `array` has its datatype and shape."""
        got = Datatype.from_numpy(array.dtype)
        if got is not self.datatype:
            hint = ""
            if got in _FLOATS and self.datatype in _FLOATS:
                hint = f"; cast it, e.g. x.astype(numpy.{self.datatype.numpy.name})"
            raise InvalidInput(
                f"tensor '{self.name}': expected datatype {self.datatype.value}, "
                f"got {got.value}{hint}",
                field=self.name,
            )
        if not self.matches_shape(array.shape):
            raise InvalidInput(
                f"tensor '{self.name}': expected shape {self.shape}, got {list(array.shape)}",
                field=self.name,
            )


_FLOATS = {Datatype.FP16, Datatype.FP32, Datatype.FP64}


class Signature(BaseModel):
    """The named inputs a model takes and the named outputs it returns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_names(cls, specs: list[TensorSpec]) -> list[TensorSpec]:
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique, repeated: {dupes}")
        return specs

    @model_validator(mode="after")
    def _padding(self) -> Signature:
        for spec in self.inputs:
            if spec.padded_like is not None:
                raise ValueError(f"input '{spec.name}': padded_like is for outputs")
            if spec.optional and spec is self.inputs[0]:
                raise ValueError(f"input '{spec.name}': the first input cannot be optional")
            if spec.pad_value is not None:
                if spec.datatype is Datatype.BYTES:
                    raise ValueError(f"input '{spec.name}': BYTES inputs cannot be padded")
                if -1 not in spec.shape[1:]:
                    raise ValueError(
                        f"input '{spec.name}': pad_value needs a dynamic axis past the batch"
                    )
        padded = {s.name: s for s in self.inputs if s.pad_value is not None}
        for spec in self.outputs:
            if spec.pad_value is not None:
                raise ValueError(f"output '{spec.name}': pad_value is for inputs")
            if spec.optional:
                raise ValueError(f"output '{spec.name}': only inputs can be optional")
            if spec.padded_like is None:
                continue
            source = padded.get(spec.padded_like)
            if source is None:
                raise ValueError(
                    f"output '{spec.name}': padded_like names '{spec.padded_like}', "
                    "which is not an input with a pad_value"
                )
            if len(spec.shape) > len(source.shape):
                raise ValueError(
                    f"output '{spec.name}' has more axes than '{source.name}', "
                    "the input it is padded like"
                )
        return self

    @property
    def optional_inputs(self) -> frozenset[str]:
        return frozenset(s.name for s in self.inputs if s.optional)

    @property
    def padded(self) -> bool:
        """Whether requests of different lengths are padded to share a batch."""
        return any(s.pad_value is not None for s in self.inputs)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        expected = ", ".join(s.name for s in self.inputs)
        raise InvalidInput(f"unexpected input '{name}' (expected inputs: {expected})", field=name)

    def check_inputs(self, tensors: Mapping[str, Array]) -> None:
        """Raise `InvalidInput` unless `tensors` has exactly the declared inputs, each matching.

        All inputs must agree on the batch size (axis 0).
        """
        _check_names("input", [s.name for s in self.inputs], tensors, self.optional_inputs)
        for spec in self.inputs:
            if spec.name in tensors:
                spec.check(tensors[spec.name])
        _check_batch("input", tensors)

    def check_outputs(self, tensors: Mapping[str, Array]) -> None:
        """Raise `InvalidInput` unless a model's outputs match the declared outputs."""
        _check_names("output", [s.name for s in self.outputs], tensors)
        for spec in self.outputs:
            spec.check(tensors[spec.name])


def _check_names(
    kind: str,
    declared: list[str],
    tensors: Mapping[str, Array],
    optional: frozenset[str] = frozenset(),
) -> None:
    extra = [n for n in tensors if n not in declared]
    if extra:
        raise InvalidInput(
            f"unexpected {kind} '{extra[0]}' (expected {kind}s: {', '.join(declared)})",
            field=extra[0],
        )
    missing = [n for n in declared if n not in tensors and n not in optional]
    if missing:
        raise InvalidInput(
            f"missing {kind} '{missing[0]}' (expected {kind}s: {', '.join(declared)})",
            field=missing[0],
        )


def _check_batch(kind: str, tensors: Mapping[str, Array]) -> None:
    sizes = {name: a.shape[0] for name, a in tensors.items() if a.ndim > 0}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise InvalidInput(
            f"{kind} '{empty[0]}' is an empty batch (axis 0 has size 0)", field=empty[0]
        )
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"'{n}': {s}" for n, s in sizes.items())
        raise InvalidInput(f"{kind}s disagree on the batch size (axis 0): {detail}")


def batch_size(tensors: Mapping[str, Array]) -> int:
    """The size of axis 0 shared by `tensors` (1 for scalars)."""
    for array in tensors.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0
