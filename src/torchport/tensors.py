"""Converting values to and from tensors: JSON-like data (nested lists), numpy or torch
values, and the Open Inference Protocol's raw bytes, each checked against a datatype and
named in the error when it does not fit."""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from torchport.errors import InvalidInput
from torchport.types import Array, Datatype, Signature, Tensors, TensorSpec


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
    def encode(item: Any, depth: int = 0) -> Any:
        if isinstance(item, list | tuple):
            if depth >= MAX_DIMS:
                raise InvalidInput(
                    f"tensor '{name}': data is nested deeper than {MAX_DIMS} dimensions",
                    field=name,
                )
            return [encode(i, depth + 1) for i in item]
        if isinstance(item, bytes):
            return item
        if isinstance(item, str):
            return item.encode("utf-8")
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:  # binary data in JSON, as KServe v1 and torchport's examples write it
                return base64.b64decode(item["b64"], validate=True)
            except binascii.Error:
                raise InvalidInput(
                    f"tensor '{name}': a {{\"b64\": ...}} value is not valid base64", field=name
                ) from None
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
    """Nested lists for JSON: BYTES as UTF-8 strings, or `{"b64": ...}` where not UTF-8
    (read back by `to_array`)."""
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
            return {"b64": base64.b64encode(items).decode("ascii")}
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
        items = _length_prefixed(bytes(data), name)
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


HEAVY_BYTES = 256 * 1024
"""Tensors (or bodies) past this size are decoded, encoded and stacked off the event
loop: below it the thread hop costs more than the work."""


def weight(tensors: Tensors) -> int:
    """About how many bytes `tensors` hold (a BYTES element counted as 64)."""
    return sum(a.size * 64 if a.dtype == object else a.nbytes for a in tensors.values())


_LENGTH = struct.Struct("<I")


def _length_prefixed(data: bytes, name: str) -> list[bytes]:
    """BYTES elements, each a 4-byte little-endian length and the bytes. The tightest
    loop Python has for it (a large tensor holds the GIL for the whole walk)."""
    items: list[bytes] = []
    append, unpack = items.append, _LENGTH.unpack_from
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(
                f"tensor '{name}': BYTES data ends inside a length prefix", field=name
            )
        (size,) = unpack(data, offset)
        offset += 4
        if offset + size > end:
            raise InvalidInput(f"tensor '{name}': BYTES element runs past the data", field=name)
        append(data[offset : offset + size])
        offset += size
    return items


MAX_ELEMENTS = 1 << 31
MAX_DIMS = 32
"""numpy's own limit is 64; no model here takes more than a handful."""


def element_count(shape: Sequence[int], *, name: str) -> int:
    """The number of elements of a concrete `shape` (no -1), refusing absurd sizes."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(
            f"tensor '{name}': shape has {len(shape)} dimensions, at most {MAX_DIMS}", field=name
        )
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise InvalidInput(
                f"tensor '{name}': shape {list(shape)} must hold non-negative integers", field=name
            )
        count *= dim
    # A zero dimension makes any count 0, but numpy still refuses a dimension past intp.
    if count > MAX_ELEMENTS or any(dim > MAX_ELEMENTS for dim in shape):
        raise InvalidInput(
            f"tensor '{name}': shape {list(shape)} has too many elements", field=name
        )
    return count
