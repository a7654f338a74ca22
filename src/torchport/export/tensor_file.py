"""The plain-text tensors file the C++ runner (`examples/cpp`) reads and prints:

    tensor NAME DTYPE DIM0 DIM1 ...
    VALUE VALUE ...

row-major values, whitespace-separated, on any number of lines; `#` starts a comment line.
Text, so a robot's own code can write it without a library."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from torchport.errors import InvalidInput
from torchport.types import Array

DTYPES = {"float32", "float64", "int32", "int64", "bool"}


def format_tensors(tensors: Sequence[tuple[str, Array]]) -> str:
    lines = []
    for name, array in tensors:
        dtype = str(array.dtype)
        if dtype not in DTYPES or not name or any(c.isspace() for c in name):
            raise InvalidInput(f"tensor {name!r} ({dtype}) cannot be written as text", field=name)
        lines.append(" ".join(["tensor", name, dtype, *map(str, array.shape)]))
        flat = array.reshape(-1)
        values = flat.astype(np.int8) if array.dtype == bool else flat
        for start in range(0, len(values), 8):
            lines.append(" ".join(repr(v.item()) for v in values[start : start + 8]))
    return "\n".join(lines) + "\n"


def parse_tensors(text: str) -> list[tuple[str, Array]]:
    tensors: list[tuple[str, Array]] = []
    header: list[str] | None = None
    values: list[str] = []

    def finish() -> None:
        if header is None:
            if values:
                raise InvalidInput("values before the first 'tensor' line", field="tensors")
            return
        if len(header) < 2 or header[1] not in DTYPES:
            raise InvalidInput(f"bad tensor line: tensor {' '.join(header)}", field="tensors")
        name, dtype, *dims = header
        shape = [int(d) for d in dims]
        array = np.array([float(v) for v in values], np.float64)
        if array.size != int(np.prod(shape)):
            raise InvalidInput(f"tensor {name}: {array.size} values for shape {shape}", field=name)
        tensors.append((name, array.reshape(shape).astype(dtype)))

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("tensor "):
            finish()
            header, values = stripped.split()[1:], []
        else:
            values.extend(stripped.split())
    finish()
    return tensors
