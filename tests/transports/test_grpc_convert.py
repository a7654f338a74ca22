"""The gRPC messages: generated from the .proto, wire-compatible with other OIP clients,
and converted to and from torchport's tensors exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EVERY_DATATYPE
from torchport.errors import InvalidInput
from torchport.service.dataplane import InferResponse
from torchport.transports.grpc import convert
from torchport.transports.grpc.convert import CONTENTS_FIELD, pb
from torchport.types import Datatype

PROTO_DIR = Path(convert.__file__).with_name("proto")


def test_the_committed_descriptors_are_what_the_proto_compiles_to(tmp_path: Path) -> None:
    out = tmp_path / "inference.binpb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--descriptor_set_out={out}", str(PROTO_DIR / "inference.proto")],
        check=True,
    )  # fmt: skip
    assert out.read_bytes() == (PROTO_DIR / "inference.binpb").read_bytes(), "run: make protos"


def test_messages_are_wire_compatible_with_tritonclient() -> None:
    # Same full names, field numbers and types as the messages tritonclient.grpc sends.
    from tritonclient.grpc import service_pb2 as triton

    def fields(message: object) -> dict[str, tuple[int, int, str | None]]:
        out = {}
        for f in message.fields:  # type: ignore[attr-defined]
            kind = f.message_type.full_name if f.message_type else None
            out[f.name] = (f.number, f.type, kind)
        for nested in message.nested_types:  # type: ignore[attr-defined]
            out.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return out

    for name, message in convert.FILE.message_types_by_name.items():
        theirs = triton.DESCRIPTOR.message_types_by_name[name]
        ours = fields(message)
        assert {k: fields(theirs)[k] for k in ours} == ours, name
    methods = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for method in convert.SERVICE.methods:
        assert methods[method.name].input_type.full_name == method.input_type.full_name


@pytest.mark.parametrize("datatype", [d for d in EVERY_DATATYPE if d != "FP16"])
def test_typed_contents_round_trip_every_datatype(datatype: str) -> None:
    array = np.concatenate([EVERY_DATATYPE[datatype]] * 2)
    request = pb.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=array.shape)
    getattr(tensor.contents, CONTENTS_FIELD[Datatype(datatype)]).extend(array.reshape(-1).tolist())
    wire = pb.ModelInferRequest.FromString(request.SerializeToString())
    decoded, raw = convert.decode_request(wire)
    assert not raw
    np.testing.assert_array_equal(decoded.inputs["x"], array)
    assert decoded.inputs["x"].dtype == array.dtype
    message = convert.encode_response(
        InferResponse(model="echo", version=1, outputs={"x": decoded.inputs["x"]}), raw=False
    )
    [out] = message.outputs
    assert (out.datatype, list(out.shape)) == (datatype, list(array.shape))
    back = np.array(list(getattr(out.contents, CONTENTS_FIELD[Datatype(datatype)])))
    assert list(back.reshape(-1)) == list(array.reshape(-1))


def test_fp16_outputs_go_back_raw_even_for_a_typed_request() -> None:
    half = np.array([[0.5, -1.0]], np.float16)
    message = convert.encode_response(
        InferResponse(model="m", version=1, outputs={"h": half, "f": half.astype(np.float32)}),
        raw=False,
    )
    assert len(message.raw_output_contents) == 2
    assert not message.outputs[0].HasField("contents")
    assert message.raw_output_contents[0] == half.tobytes()


@pytest.mark.parametrize(
    ("build", "field", "problem"),
    [
        (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[2]), "x", "needs 2 elements"),
        (lambda r: r.inputs.add(name="x", datatype="FP99", shape=[1]), "x", "unknown datatype"),
        (lambda r: r.inputs.add(name="", datatype="FP32", shape=[1]), "inputs[0].name", "empty"),
        (lambda r: None, "inputs", "inputs is empty"),
    ],
)
def test_malformed_requests_name_the_field(build: object, field: str, problem: str) -> None:
    request = pb.ModelInferRequest(model_name="m")
    build(request)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=problem) as failed:
        convert.decode_request(request)
    assert failed.value.field == field


def test_int8_values_out_of_range_are_refused_not_wrapped() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="INT8", shape=[1, 2])
    tensor.contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidInput, match="out of range for INT8"):
        convert.decode_request(request)


def test_raw_contents_for_some_inputs_only_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.float32(1).tobytes())
    with pytest.raises(InvalidInput, match="raw_input_contents has 1 entries for 2 inputs"):
        convert.decode_request(request)
