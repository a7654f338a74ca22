"""Open Inference Protocol v2 over gRPC, with standard clients, against the gRPC servicer
in process (a grpc.aio server on a loopback port, as the server runs it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

import torchport
from tests.conftest import EVERY_DATATYPE
from tests.e2e.server import TOKEN, value
from tests.inprocess import InProcess
from torchport.transports.grpc.convert import CONTENTS_FIELD, pb
from torchport.transports.grpc.convert import stub as plain_stub
from torchport.types import Datatype


@pytest.fixture(scope="module")
def client(served: InProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(served.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def stub(served: InProcess) -> Iterator[Any]:
    """A plain grpcio client built from torchport's .proto, no tritonclient involved."""
    with grpc.insecure_channel(served.grpc_address) as channel:
        yield plain_stub(channel)


def mlp_input(rows: int, seed: int = 0) -> triton.InferInput:
    x = np.random.default_rng(seed).standard_normal((rows, 32)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_metadata_with_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "9")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "torchport"
    assert "model_repository" in meta["extensions"]
    model = client.get_model_metadata("digits", as_json=True)
    assert model["versions"] == ["1"]
    assert model["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}
    ]
    assert [o["name"] for o in model["outputs"]] == ["probabilities", "label"]


def test_tritonclient_infer_equals_the_embedded_model(
    client: triton.InferenceServerClient, mlp_package: Path
) -> None:
    x = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(
        "mlp", [tensor], outputs=[triton.InferRequestedOutput("output")], request_id="req-7"
    )
    with torchport.load(mlp_package) as m:
        want = m.predict({"input": x})["output"]
    np.testing.assert_array_equal(result.as_numpy("output"), want)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "mlp", "1")


def test_every_datatype_round_trips_as_raw_bytes(client: triton.InferenceServerClient) -> None:
    inputs = []
    for datatype, array in EVERY_DATATYPE.items():
        batch = np.concatenate([array, array])
        tensor = triton.InferInput(datatype.lower(), list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        inputs.append(tensor)
    result = client.infer("echo", inputs)
    for datatype, array in EVERY_DATATYPE.items():
        got = result.as_numpy(datatype.lower())
        want = np.concatenate([array, array])
        assert got.shape == want.shape, datatype
        if datatype == "BYTES":
            assert [bytes(x) for x in got.reshape(-1)] == list(want.reshape(-1))
        else:
            assert got.dtype == want.dtype, datatype
            np.testing.assert_array_equal(got, want)


def test_typed_contents_from_a_plain_grpc_stub_come_back_typed(
    stub: Any,
) -> None:
    request = pb.ModelInferRequest(model_name="echo", model_version="1", id="typed")
    typed = {d: a for d, a in EVERY_DATATYPE.items() if d != "FP16"}  # FP16 is raw-only
    for datatype, array in typed.items():
        tensor = request.inputs.add(name=datatype.lower(), datatype=datatype, shape=array.shape)
        field = getattr(tensor.contents, CONTENTS_FIELD[Datatype(datatype)])
        field.extend(array.reshape(-1).tolist())
    # echo needs every input: FP16 cannot be typed, so this request is refused...
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'fp16'" in refused.value.details()
    # ...and with FP16 given as typed FP32-like values it names the field and the rule.
    fp16 = request.inputs.add(name="fp16", datatype="FP16", shape=[1, 3])
    fp16.contents.fp32_contents.extend([0.5, -1.0, 2.0])
    with pytest.raises(grpc.RpcError) as no_typed_fp16:
        stub.ModelInfer(request)
    assert no_typed_fp16.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents" in no_typed_fp16.value.details()


def test_a_plain_stub_with_typed_contents_gets_typed_outputs(stub: Any, mlp_package: Path) -> None:
    x = np.random.default_rng(9).standard_normal((2, 32)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp", id="plain")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 32])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert (response.id, response.model_version) == ("plain", "1")
    assert not response.raw_output_contents
    [out] = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("output", "FP32", [2, 8])
    with torchport.load(mlp_package) as m:
        want = m.predict({"input": x})["output"]
    np.testing.assert_allclose(np.array(out.contents.fp32_contents).reshape(2, 8), want, rtol=1e-6)


def test_requested_outputs_subset(client: triton.InferenceServerClient) -> None:
    x = np.zeros((2, 1, 8, 8), np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    only_label = client.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("label")])
    assert [o.name for o in only_label.get_response().outputs] == ["label"]
    assert only_label.as_numpy("label").dtype == np.int64


def test_text_model_with_bytes_input(
    client: triton.InferenceServerClient, minilm_package: Path
) -> None:
    texts = np.array([b"torchport serves models", "naïve café".encode()], dtype=object)
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts)
    got = client.infer("minilm", [tensor], model_version="1").as_numpy("embedding")
    with torchport.load(minilm_package) as m:
        want = m.predict({"text": texts})["embedding"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_asyncio_client_under_concurrency(served: InProcess, mlp_package: Path) -> None:
    rng = np.random.default_rng(11)
    requests = [
        rng.standard_normal((int(rng.integers(1, 5)), 32)).astype(np.float32) for _ in range(60)
    ]
    with torchport.load(mlp_package) as m:
        want = [m.predict({"input": x})["output"] for x in requests]

    async def main() -> list[np.ndarray]:
        async with triton_aio.InferenceServerClient(served.grpc_address) as c:

            async def one(x: np.ndarray) -> np.ndarray:
                tensor = triton_aio.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await c.infer("mlp", [tensor])
                out: np.ndarray = result.as_numpy("output")
                return out

            return list(await asyncio.gather(*(one(x) for x in requests)))

    for got, expected in zip(asyncio.run(main()), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c: c.infer("nope", [mlp_input(1)]), "NOT_FOUND", "nope"),
        (lambda c: c.infer("mlp", [mlp_input(1)], model_version="7"), "NOT_FOUND", "version 7"),
        (
            lambda c: c.infer("mlp", [mlp_input(1)], model_version="x"),
            "INVALID_ARGUMENT",
            "model_version",
        ),
        (lambda c: c.get_model_metadata("nope"), "NOT_FOUND", "nope"),
        (lambda c: c.infer("digits", [mlp_input(1)]), "INVALID_ARGUMENT", "tensor 'input'"),
        (
            lambda c: c.infer("mlp", [mlp_input(1)], outputs=[triton.InferRequestedOutput("z")]),
            "INVALID_ARGUMENT",
            "unknown output 'z'",
        ),
    ],
)
def test_errors_map_to_status_codes_naming_the_field(
    client: triton.InferenceServerClient, call: object, code: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as failed:
        call(client)  # type: ignore[operator]
    assert failed.value.status() == f"StatusCode.{code}"
    assert message in failed.value.message()


def test_shape_and_element_count_mismatch_is_invalid_argument(
    stub: Any,
) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    request.raw_input_contents.append(b"\0" * 12)
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(request)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input" in failed.value.details()
    trailing = dict(failed.value.trailing_metadata() or ())
    assert trailing["torchport-error-code"] == "invalid_input"


@pytest.mark.parametrize("body", [b"\xff\xff\xff not protobuf", b"\x0a\x05mlp"])
def test_bytes_that_are_no_message_are_invalid_argument(served: InProcess, body: bytes) -> None:
    # Garbage, and a message cut short: the caller's error, never UNKNOWN or INTERNAL.
    labels = {"model": "", "version": "", "protocol": "oip_grpc", "outcome": "invalid_input"}
    before = value(served.scrape(), "torchport_requests_total", **labels)
    with grpc.insecure_channel(served.grpc_address) as channel:
        send = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as failed:
            send(body, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest message" in failed.value.details()
    trailing = dict(failed.value.trailing_metadata() or ())
    assert trailing["torchport-error-field"] == "request"
    # Counted as a refused request of no known model, as REST counts a body it cannot read.
    assert value(served.scrape(), "torchport_requests_total", **labels) == before + 1


def test_health_and_reflection_refuse_bytes_that_are_no_message(served: InProcess) -> None:
    garbage = b"\xff\xff\xff not protobuf"
    with grpc.insecure_channel(served.grpc_address) as channel:
        calls = [
            lambda: channel.unary_unary("/grpc.health.v1.Health/Check")(garbage, timeout=30),
            lambda: next(channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage)),
            *(
                lambda name=name: next(
                    channel.stream_stream(f"/{name}/ServerReflectionInfo")(iter([garbage]))
                )
                for name in (
                    "grpc.reflection.v1alpha.ServerReflection",
                    "grpc.reflection.v1.ServerReflection",
                )
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as failed:
                call()
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid grpc." in failed.value.details()


def test_a_full_queue_is_resource_exhausted(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 4), np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    codes: list[str] = []

    def send() -> None:
        try:
            client.infer("slow", [tensor])
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(str(exc.status()))

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        for _ in range(24):
            pool.submit(send)
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes
    assert "OK" in codes
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}


def test_a_request_past_its_timeout_parameter_is_deadline_exceeded(
    client: triton.InferenceServerClient,
) -> None:
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(client.infer, "slow", [tensor])  # holds the only worker 0.2 s
        with pytest.raises(InferenceServerException) as late:
            client.infer("slow", [tensor], timeout=20_000)  # 20 ms, in µs, as OIP says
        busy.result()
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_an_oversize_message_is_refused_cleanly(client: triton.InferenceServerClient) -> None:
    big = np.zeros((40_000, 32), np.float32)  # 5 MB, over the server's 4 MiB limit
    tensor = triton.InferInput("input", list(big.shape), "FP32")
    tensor.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("mlp", [tensor])
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


def test_repository_calls_need_the_token(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_repository_index()
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    headers = {"authorization": f"Bearer {TOKEN}"}
    index = client.get_model_repository_index(headers=headers, as_json=True)
    names = {(m["name"], m["version"], m["state"]) for m in index["models"]}
    assert ("mlp", "1", "READY") in names
    client.unload_model("digits", headers=headers)
    assert not client.is_model_ready("digits")
    client.load_model("digits", headers=headers)
    assert client.is_model_ready("digits")
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("nope", headers=headers)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_health_checking_and_reflection(served: InProcess) -> None:
    with grpc.insecure_channel(served.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = list(
            reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


@pytest.mark.parametrize("package", ["grpc.reflection.v1alpha", "grpc.reflection.v1"])
def test_reflection_answers_each_request_before_the_next_is_sent(
    served: InProcess, package: str
) -> None:
    # As grpcurl uses it: one stream, one question at a time, each answer awaited; newer
    # tools ask the stable v1 service first, older ones v1alpha (the same messages).
    questions: queue.Queue[Any] = queue.Queue()

    def ask() -> Iterator[Any]:
        while (question := questions.get()) is not None:
            yield question

    with grpc.insecure_channel(served.grpc_address) as channel:
        answers = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(ask())
        questions.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = {s.name for s in next(answers).list_services_response.service}
        assert {"inference.GRPCInferenceService", f"{package}.ServerReflection"} <= listed
        questions.put(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"{package}.ServerReflection"
            )
        )
        [own] = next(answers).file_descriptor_response.file_descriptor_proto
        assert descriptor_pb2.FileDescriptorProto.FromString(own).package == package
        symbol = "inference.GRPCInferenceService"
        questions.put(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        files = next(answers).file_descriptor_response.file_descriptor_proto
        described = [descriptor_pb2.FileDescriptorProto.FromString(f) for f in files]
        [inference] = [f for f in described if f.name == "inference.proto"]
        methods = {m.name for m in inference.service[0].method}
        assert {"ModelInfer", "ModelMetadata", "RepositoryIndex"} <= methods
        questions.put(reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"))
        assert next(answers).error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        questions.put(None)
        assert list(answers) == []
