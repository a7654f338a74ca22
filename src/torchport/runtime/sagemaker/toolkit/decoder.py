"""Request bodies to numpy arrays, by content type, as the toolkit's `decoder` does — except
that a `.npy` body holding Python objects is refused, never unpickled."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from torchport.runtime.sagemaker.toolkit import content_types, errors


def _json_to_numpy(string_like: str | bytes, dtype: Any = None) -> np.ndarray:
    return np.array(json.loads(string_like), dtype=dtype)


def _csv_to_numpy(string_like: str | bytes, dtype: Any = None) -> np.ndarray:
    text = (
        string_like.decode("utf-8") if isinstance(string_like, bytes | bytearray) else string_like
    )
    return np.genfromtxt(io.StringIO(text), dtype=dtype, delimiter=",")


def _npy_to_numpy(npy_array: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(npy_array), allow_pickle=False))


_decoder_map: dict[str, Callable[[Any], np.ndarray]] = {
    content_types.NPY: _npy_to_numpy,
    content_types.CSV: _csv_to_numpy,
    content_types.JSON: _json_to_numpy,
}


def decode(obj: Any, content_type: str) -> np.ndarray:
    """`obj` (text for JSON and CSV, bytes for NPY) as an array."""
    decoder = _decoder_map.get(content_type)
    if decoder is None:
        raise errors.UnsupportedFormatError(content_type)
    return decoder(obj)
