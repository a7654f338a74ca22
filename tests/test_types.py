"""Signatures and tensor conversion: what every input a user sends goes through."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from torchport.errors import InvalidInput
from torchport.tensors import as_numpy, json_to_arrays, to_array, to_jsonable
from torchport.types import Datatype, Signature, TensorSpec

NUMERIC = [d for d in Datatype if d is not Datatype.BYTES]


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec(name=name, datatype=Datatype(datatype), shape=shape)


@st.composite
def specs_and_arrays(draw: st.DrawFn) -> tuple[TensorSpec, np.ndarray]:
    datatype = draw(st.sampled_from(NUMERIC))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    dynamic = draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    declared = [-1 if d else s for s, d in zip(shape, dynamic, strict=True)]
    array = draw(hnp.arrays(datatype.numpy, shape))
    return TensorSpec(name="x", datatype=datatype, shape=declared), array


@given(specs_and_arrays())
def test_an_array_matching_its_spec_passes_the_check(case: tuple[TensorSpec, np.ndarray]) -> None:
    tensor_spec, array = case
    tensor_spec.check(array)


@given(specs_and_arrays(), st.data())
def test_a_wrong_fixed_dimension_is_refused_naming_the_tensor(
    case: tuple[TensorSpec, np.ndarray], data: st.DataObject
) -> None:
    tensor_spec, array = case
    fixed = [i for i, d in enumerate(tensor_spec.shape) if d != -1]
    if not fixed:
        return
    axis = data.draw(st.sampled_from(fixed))
    bad_shape = list(array.shape)
    bad_shape[axis] += data.draw(st.integers(1, 3))
    bad = np.zeros(bad_shape, dtype=array.dtype)
    with pytest.raises(InvalidInput, match=r"tensor 'x': expected shape .* got") as info:
        tensor_spec.check(bad)
    assert info.value.field == "x"


@given(specs_and_arrays())
def test_a_wrong_rank_is_refused(case: tuple[TensorSpec, np.ndarray]) -> None:
    tensor_spec, array = case
    with pytest.raises(InvalidInput, match="expected shape"):
        tensor_spec.check(array[..., None])


@given(specs_and_arrays(), st.sampled_from(NUMERIC))
def test_a_wrong_datatype_is_refused_with_expected_and_got(
    case: tuple[TensorSpec, np.ndarray], other: Datatype
) -> None:
    tensor_spec, array = case
    if other is tensor_spec.datatype:
        return
    with pytest.raises(InvalidInput) as info:
        tensor_spec.check(np.zeros(array.shape, other.numpy))
    assert tensor_spec.datatype.value in str(info.value)
    assert other.value in str(info.value)


@settings(max_examples=50)
@given(specs_and_arrays())
def test_json_round_trip_keeps_values_and_type(case: tuple[TensorSpec, np.ndarray]) -> None:
    tensor_spec, array = case
    if tensor_spec.datatype in (Datatype.FP16, Datatype.FP32, Datatype.FP64):
        array = np.nan_to_num(array, posinf=0, neginf=0)
    back = to_array(to_jsonable(array), tensor_spec.datatype, name="x")
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@given(st.lists(st.lists(st.text(max_size=8), min_size=2, max_size=2), min_size=1, max_size=4))
def test_bytes_tensors_round_trip_as_utf8_strings(rows: list[list[str]]) -> None:
    array = to_array(rows, Datatype.BYTES, name="text")
    assert array.shape == (len(rows), 2)
    assert all(isinstance(x, bytes) for x in array.flat)
    assert to_jsonable(array) == rows


def test_signature_reports_missing_and_unexpected_inputs_by_name() -> None:
    sig = Signature(inputs=[spec("a", "FP32", [-1, 2])], outputs=[spec("y", "FP32", [-1])])
    with pytest.raises(InvalidInput, match="missing input 'a'"):
        sig.check_inputs({})
    ok = np.zeros((1, 2), np.float32)
    with pytest.raises(InvalidInput, match="unexpected input 'b'"):
        sig.check_inputs({"a": ok, "b": ok})


def test_inputs_must_agree_on_the_batch_size() -> None:
    sig = Signature(
        inputs=[spec("a", "FP32", [-1, 2]), spec("b", "FP32", [-1, 2])],
        outputs=[spec("y", "FP32", [-1])],
    )
    with pytest.raises(InvalidInput, match="batch size"):
        sig.check_inputs({"a": np.zeros((1, 2), np.float32), "b": np.zeros((2, 2), np.float32)})


def test_json_data_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(InvalidInput, match="expected INT64 data, got floats"):
        to_array([[1.5]], Datatype.INT64, name="ids")
    with pytest.raises(InvalidInput, match="out of range for UINT8"):
        to_array([300], Datatype.UINT8, name="pixels")
    with pytest.raises(InvalidInput, match="ragged"):
        to_array([[1.0, 2.0], [3.0]], Datatype.FP32, name="x")
    with pytest.raises(InvalidInput, match="expected BYTES data"):
        to_array([1, 2], Datatype.BYTES, name="text")


def test_json_without_a_signature_uses_the_documented_defaults() -> None:
    arrays = json_to_arrays({"f": [[0.5]], "i": [1], "b": [True], "s": ["hi"]})
    assert arrays["f"].dtype == np.float32
    assert arrays["i"].dtype == np.int64
    assert arrays["b"].dtype == np.bool_
    assert arrays["s"].dtype == object


def test_signature_rejects_duplicate_names_and_bad_dimensions() -> None:
    with pytest.raises(ValueError, match="unique"):
        Signature(
            inputs=[spec("a", "FP32", [1]), spec("a", "FP32", [1])],
            outputs=[spec("y", "FP32", [1])],
        )
    with pytest.raises(ValueError, match="positive or -1"):
        spec("a", "FP32", [0])


def test_torch_tensors_are_accepted_as_arrays() -> None:
    import torch

    array = as_numpy(torch.ones(2, 3), "x")
    assert array.dtype == np.float32
    assert array.shape == (2, 3)


def test_an_optional_input_may_be_left_out_but_is_checked_when_sent() -> None:
    sig = Signature(
        inputs=[
            TensorSpec(name="body", datatype=Datatype.BYTES, shape=[-1]),
            TensorSpec(name="headers", datatype=Datatype.BYTES, shape=[-1], optional=True),
        ],
        outputs=[TensorSpec(name="y", datatype=Datatype.FP32, shape=[-1])],
    )
    body = np.array([b"x"], dtype=object)
    sig.check_inputs({"body": body})
    with pytest.raises(InvalidInput, match="'headers'"):
        sig.check_inputs({"body": body, "headers": np.zeros(1, dtype=np.float32)})
    with pytest.raises(InvalidInput, match="missing input 'body'"):
        sig.check_inputs({"headers": body})
    assert "optional" not in sig.model_dump(exclude_none=True)["inputs"][0]


def test_outputs_and_the_first_input_cannot_be_optional() -> None:
    x = {"name": "x", "datatype": "FP32", "shape": [-1]}
    with pytest.raises(ValueError, match="only inputs can be optional"):
        Signature.model_validate({"inputs": [x], "outputs": [{**x, "optional": True}]})
    with pytest.raises(ValueError, match="first input cannot be optional"):
        Signature.model_validate({"inputs": [{**x, "optional": True}], "outputs": [x]})


def test_bytes_that_are_not_utf8_round_trip_through_json_as_b64() -> None:
    raw = np.empty(2, dtype=object)
    raw[:] = [b"text", b"\xff\x00\x01"]
    jsonable = to_jsonable(raw)
    assert jsonable == ["text", {"b64": "/wAB"}]
    back = to_array(jsonable, Datatype.BYTES, name="x")
    assert back.tolist() == [b"text", b"\xff\x00\x01"]
    with pytest.raises(InvalidInput, match="not valid base64"):
        to_array([{"b64": "***"}], Datatype.BYTES, name="x")
