"""gRPC inference fuzzed: hypothesis builds `ModelInferRequest`s of every shape a client
could send (wrong names, datatypes, shapes, contents, raw bytes, parameters, versions) and
bytes that are no message at all; the server answers each with a status naming the
problem, never UNKNOWN or INTERNAL, and stays healthy."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.inprocess import InProcess
from torchport.transports.grpc.convert import SERVICE_NAME, pb, stub

NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
HUGE = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DIMS = st.one_of(st.integers(min_value=-2, max_value=70), HUGE)

contents = st.fixed_dictionaries(
    {},
    optional={
        "fp32_contents": st.lists(st.floats(width=32, allow_nan=True), max_size=70),
        "fp64_contents": st.lists(st.floats(), max_size=40),
        "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),
        "int64_contents": st.lists(HUGE, max_size=40),
        "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=10),
        "bool_contents": st.lists(st.booleans(), max_size=10),
        "bytes_contents": st.lists(st.binary(max_size=30), max_size=10),
    },
)

parameter = st.one_of(
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(int64_param=v), HUGE),
    st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=20)),
)
parameters = st.dictionaries(
    st.sampled_from(["timeout", "binary_data_size", "priority", "x"]), parameter, max_size=3
)


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    return pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(["input", "text", "x", ""]) | st.text(max_size=8)),
        datatype=draw(st.sampled_from(DATATYPES) | st.text(max_size=6)),
        shape=draw(st.lists(DIMS, max_size=4)),
        contents=pb.InferTensorContents(**draw(contents)),
        parameters=draw(parameters),
    )


@st.composite
def requests(draw: st.DrawFn) -> Any:
    inputs = draw(st.lists(tensors(), max_size=3))
    raw = draw(st.lists(st.binary(max_size=300), max_size=len(inputs) + 1))
    return pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["mlp", "minilm", "echo", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2", "0", "-1", "²", "9" * 30])),
        id=draw(st.text(max_size=10)),
        inputs=inputs,
        raw_input_contents=raw,
        parameters=draw(parameters),
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n)
            for n in draw(st.lists(st.sampled_from(["output", "embedding", "?"]), max_size=2))
        ],
    )


def assert_answered(call: Any, request: Any) -> None:
    code: grpc.StatusCode | None = None
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code not in NEVER, (code, details, request)


QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=300, deadline=None, suppress_health_check=QUIET)
@given(request=requests())
def test_fuzzed_infer_requests_get_a_status_naming_the_problem(
    served: InProcess, request: Any
) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        assert_answered(stub(channel).ModelInfer, request)


@settings(max_examples=100, deadline=None, suppress_health_check=QUIET)
@given(raw=st.binary(max_size=200))
def test_bytes_that_are_no_message_are_invalid_argument(served: InProcess, raw: bytes) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        infer = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")  # bytes as they are
        assert_answered(infer, raw)
        metadata = channel.unary_unary(f"/{SERVICE_NAME}/ModelMetadata")
        assert_answered(metadata, raw)


def test_the_server_is_healthy_after_the_fuzzing(served: InProcess) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        live = stub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
    assert live.live
