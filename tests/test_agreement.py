"""One comparison of outputs for every check: an upload's examples, an export's parity and
two versions' answers agree or differ by the same rule."""

from __future__ import annotations

import numpy as np

from torchport.agreement import EXACT, TOLERANCES, Tolerance, compare_outputs
from torchport.types import Datatype, TensorSpec

FLOAT = TensorSpec(name="y", datatype=Datatype.FP32, shape=[-1, 2])
LABEL = TensorSpec(name="k", datatype=Datatype.INT64, shape=[-1])


def test_floats_agree_within_their_datatypes_tolerance_and_exact_types_must_match() -> None:
    want = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "k": np.array([1, 2])}
    tol = TOLERANCES[Datatype.FP32]
    close = {"y": want["y"] + tol.atol / 2, "k": want["k"]}
    [y, k] = compare_outputs([FLOAT, LABEL], [want], [close])
    assert y.agrees
    assert k.agrees
    assert k.tolerance == EXACT
    far = {"y": want["y"] + np.array([[0.0, 0.0], [0.5, 0.0]], np.float32), "k": np.array([1, 3])}
    [y, k] = compare_outputs([FLOAT, LABEL], [want], [far])
    assert (y.elements, y.rows) == (1, 1)
    assert y.max_abs == np.float32(0.5)
    assert "max abs error 0.5 over tolerance" in y.describe()
    assert (k.elements, k.rows, k.describe()) == (1, 1, "output 'k': values differ")


def test_an_override_loosens_float_outputs_only() -> None:
    want = {"y": np.zeros((1, 2), np.float32), "k": np.array([1])}
    have = {"y": np.full((1, 2), 0.5, np.float32), "k": np.array([2])}
    [y, k] = compare_outputs([FLOAT, LABEL], [want], [have], Tolerance(atol=1.0, rtol=0.0))
    assert y.agrees
    assert not k.agrees


def test_another_shape_or_a_missing_output_disagrees_everywhere() -> None:
    want = {"y": np.zeros((3, 2), np.float32)}
    [shape] = compare_outputs([FLOAT], [want], [{"y": np.zeros((2, 2), np.float32)}])
    assert (shape.rows, shape.describe()) == (3, "output 'y': shape [2, 2], expected [3, 2]")
    [missing] = compare_outputs([FLOAT], [want], [{}])
    assert (missing.rows, missing.elements) == (3, 6)


def test_equal_infinities_and_nans_agree() -> None:
    want = {"y": np.array([[np.inf, np.nan]], np.float32)}
    [y] = compare_outputs([FLOAT], [want], [{"y": want["y"].copy()}])
    assert y.agrees
