"""Tensors and signatures as plain data.

Datatypes use the Open Inference Protocol's names (`FP32`, `INT64`, `BYTES`, ...). A shape
is a list of ints with `-1` for a dynamic axis (always the batch axis, and any other axis
the model accepts at any size). Tensors inside torchport are numpy arrays; `BYTES` tensors
are numpy object arrays of `bytes`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from torchport.errors import InvalidInput

Array = npt.NDArray[Any]
Tensors = dict[str, Array]


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
        _check_names("input", [s.name for s in self.inputs], tensors)
        for spec in self.inputs:
            spec.check(tensors[spec.name])
        _check_batch("input", tensors)

    def check_outputs(self, tensors: Mapping[str, Array]) -> None:
        """Raise `InvalidInput` unless a model's outputs match the declared outputs."""
        _check_names("output", [s.name for s in self.outputs], tensors)
        for spec in self.outputs:
            spec.check(tensors[spec.name])


def _check_names(kind: str, declared: list[str], tensors: Mapping[str, Array]) -> None:
    extra = [n for n in tensors if n not in declared]
    if extra:
        raise InvalidInput(
            f"unexpected {kind} '{extra[0]}' (expected {kind}s: {', '.join(declared)})",
            field=extra[0],
        )
    missing = [n for n in declared if n not in tensors]
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


def to_array(value: Any, datatype: Datatype, *, name: str) -> Array:
    """Convert JSON-like data (nested lists) to an array of `datatype`, naming `name` on error.

    Values must already be of the right kind: numbers for numeric types (integers for
    integer types), booleans for BOOL, strings or bytes for BYTES. Nothing is rounded.
    """
    if datatype is Datatype.BYTES:
        return _bytes_array(value, name=name)
    try:
        raw = np.asarray(value)
    except ValueError:
        raise InvalidInput(
            f"tensor '{name}': data is ragged (rows of different lengths)", field=name
        ) from None
    want = datatype.numpy
    if want.kind in "iu" and raw.dtype.kind in "fO":
        # Integers past int64 (UINT64's upper half) parse as float or object: keep them exact.
        raw = _python_ints(value, raw, name)
    if raw.dtype == object:
        raise InvalidInput(f"tensor '{name}': data is ragged or mixes types", field=name)
    kind = raw.dtype.kind
    ok = (
        (datatype is Datatype.BOOL and kind == "b")
        or (want.kind in "iu" and kind in "iu")
        or (want.kind == "f" and kind in "iuf")
    )
    if raw.size == 0 and kind == "f":  # `[]` parses as float64: fine for any type
        ok = True
    if not ok:
        raise InvalidInput(
            f"tensor '{name}': expected {datatype.value} data, got {_describe_kind(kind)}",
            field=name,
        )
    if want.kind in "iu" and raw.size:
        info = np.iinfo(want)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(
                f"tensor '{name}': values out of range for {datatype.value}", field=name
            )
    return raw.astype(want, copy=False)


def _python_ints(value: Any, raw: Array, name: str) -> Array:
    try:
        items = np.array(value, dtype=object)
    except ValueError:
        return raw
    flat = items.reshape(-1)
    if flat.size == 0 or not all(type(x) is int for x in flat):
        return raw
    if min(flat) < 0 or max(flat) > np.iinfo(np.uint64).max:
        raise InvalidInput(f"tensor '{name}': values out of range", field=name)
    return items.astype(np.uint64)


def _describe_kind(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(
        kind, "other data"
    )


def _bytes_array(value: Any, *, name: str) -> Array:
    def encode(item: Any) -> Any:
        if isinstance(item, list | tuple):
            return [encode(i) for i in item]
        if isinstance(item, bytes):
            return item
        if isinstance(item, str):
            return item.encode("utf-8")
        raise InvalidInput(
            f"tensor '{name}': expected BYTES data (strings), got {type(item).__name__}",
            field=name,
        )

    items = encode(value)
    try:
        out = np.array(items, dtype=object)
    except ValueError:
        raise InvalidInput(f"tensor '{name}': data is ragged", field=name) from None
    if any(not isinstance(x, bytes) for x in out.flat):
        raise InvalidInput(f"tensor '{name}': data is ragged", field=name)
    return out


def to_jsonable(array: Array) -> Any:
    """Nested lists for JSON: BYTES as UTF-8 strings (base64 is the caller's choice elsewhere)."""
    if array.dtype == object:
        return _decode_nested(array.tolist())
    return array.tolist()


def _decode_nested(items: Any) -> Any:
    if isinstance(items, list):
        return [_decode_nested(i) for i in items]
    if isinstance(items, bytes):
        try:
            return items.decode("utf-8")
        except UnicodeDecodeError:
            return items.hex()
    return items


def as_numpy(value: Any, name: str, datatype: Datatype | None = None) -> Array:
    """Accept a numpy array, a torch tensor or nested lists, as `predict` does.

    Arrays keep their dtype (and are then checked against the signature); lists are
    converted to `datatype`, or without one to the JSON defaults (`json_to_arrays`).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SU":
            return _bytes_array(value.tolist(), name=name)
        return value
    if type(value).__module__.startswith("torch"):
        detach = getattr(value, "detach", None)
        if detach is not None:
            return np.asarray(detach().cpu().numpy())
    return to_array(value, datatype or _guess_datatype(value, name), name=name)


def infer_spec(name: str, array: Array, *, dynamic_batch: bool = True) -> TensorSpec:
    """A spec for `array` with a dynamic batch axis and every other axis fixed."""
    shape = [int(d) for d in array.shape] or [1]
    if dynamic_batch:
        shape[0] = -1
    return TensorSpec(name=name, datatype=Datatype.from_numpy(array.dtype), shape=shape)


def json_to_arrays(data: Mapping[str, Any], signature: Signature | None = None) -> Tensors:
    """Convert a JSON object of nested lists to arrays, typed by `signature` when given.

    Without a signature, floats become FP32, integers INT64, booleans BOOL, strings BYTES.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("inputs must be a JSON object from input name to a nested list")
    out: Tensors = {}
    for name, value in data.items():
        if signature is not None:
            out[name] = to_array(value, signature.input(name).datatype, name=name)
        else:
            out[name] = to_array(value, _guess_datatype(value, name), name=name)
    return out


def _guess_datatype(value: Any, name: str) -> Datatype:
    level = value
    while isinstance(level, list) and level:
        level = level[0]
    if isinstance(level, bool):
        return Datatype.BOOL
    if isinstance(level, int):
        return Datatype.INT64
    if isinstance(level, float):
        return Datatype.FP32
    if isinstance(level, str | bytes):
        return Datatype.BYTES
    raise InvalidInput(f"tensor '{name}': cannot tell the datatype of {value!r:.40}", field=name)


def to_raw(array: Array) -> bytes:
    """The Open Inference Protocol's raw bytes of a tensor: little-endian, row-major;
    BYTES elements each as a 4-byte little-endian length and the bytes."""
    if array.dtype == object:
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(data).to_bytes(4, "little"))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_raw(
    data: bytes | memoryview, datatype: Datatype, shape: Sequence[int], *, name: str
) -> Array:
    """Parse `to_raw`'s bytes back into an array of `shape`, naming `name` on error."""
    count = element_count(shape, name=name)
    if datatype is Datatype.BYTES:
        view = memoryview(data)
        items: list[bytes] = []
        offset = 0
        while offset < len(view):
            if offset + 4 > len(view):
                raise InvalidInput(
                    f"tensor '{name}': BYTES data ends inside a length prefix", field=name
                )
            size = int.from_bytes(view[offset : offset + 4], "little")
            offset += 4
            if offset + size > len(view):
                raise InvalidInput(f"tensor '{name}': BYTES element runs past the data", field=name)
            items.append(bytes(view[offset : offset + size]))
            offset += size
        if len(items) != count:
            raise InvalidInput(
                f"tensor '{name}': shape {list(shape)} needs {count} elements, "
                f"the data holds {len(items)}",
                field=name,
            )
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(tuple(shape))
    dtype = datatype.numpy.newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"tensor '{name}': shape {list(shape)} of {datatype.value} needs "
            f"{count * dtype.itemsize} bytes, got {len(data)}",
            field=name,
        )
    array = np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
    return array.astype(datatype.numpy, copy=False)


MAX_ELEMENTS = 1 << 31


def element_count(shape: Sequence[int], *, name: str) -> int:
    """The number of elements of a concrete `shape` (no -1), refusing absurd sizes."""
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise InvalidInput(
                f"tensor '{name}': shape {list(shape)} must hold non-negative integers", field=name
            )
        count *= dim
    if count > MAX_ELEMENTS:
        raise InvalidInput(
            f"tensor '{name}': shape {list(shape)} has too many elements", field=name
        )
    return count
