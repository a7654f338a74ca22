"""JSON answers carry each output exactly: a float32 parses back to the same float32."""

from __future__ import annotations

import json

import numpy as np

from torchport.transports.http.responses import json_ready, json_response


def decoded(value: object) -> object:
    return json.loads(bytes(json_response(value).body))


def test_numeric_outputs_parse_back_to_the_same_values() -> None:
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((3, 384)).astype(np.float32)
    assert np.array_equal(np.array(decoded(json_ready(floats)), np.float32), floats)
    assert np.array_equal(np.array(decoded(json_ready(floats.T)), np.float32), floats.T)
    halves = floats[:, :8].astype(np.float16)
    assert np.array_equal(np.array(decoded(json_ready(halves)), np.float16), halves)
    doubles = rng.standard_normal(5)
    assert decoded(json_ready(doubles)) == doubles.tolist()
    ints = np.array([[-(2**62), 7], [0, 2**40]], np.int64)
    assert decoded(json_ready(ints)) == ints.tolist()
    assert decoded(json_ready(np.array([True, False]))) == [True, False]
    rows = decoded(list(json_ready(floats[:, :2])))  # KServe v1's list of rows
    assert np.array_equal(np.array(rows, np.float32), floats[:, :2])


def test_bytes_outputs_are_text() -> None:
    out = np.array([b"caf\xc3\xa9", b"ok"], dtype=object)
    assert decoded(json_ready(out)) == ["café", "ok"]
