"""Between the Open Inference Protocol's protobuf messages and torchport's own types.

The only module of torchport that touches protobuf. The messages come from
`proto/inference.binpb`, which `make protos` compiles from `proto/inference.proto`; they
live in a descriptor pool of their own, so that torchport and any other implementation of
the protocol (tritonclient, KServe) can be imported into one process without their
`inference.*` names colliding. Requests become `InferRequest`s of named numpy arrays;
responses go back as raw bytes or typed contents, whichever form the request used; the
error tree maps onto gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from torchport.errors import InvalidInput, TorchportError
from torchport.service.inference import InferRequest, InferResponse, VersionState
from torchport.tensors import element_count, from_raw, to_raw
from torchport.types import Array, Datatype, Signature, Tensors, version_number

DESCRIPTORS = Path(__file__).with_name("proto") / "inference.binpb"
POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
    POOL.Add(_file)
# Reflection answers from this pool: the health and reflection services are described too.
for _module in (health_pb2, reflection_pb2):
    POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(_module.DESCRIPTOR.serialized_pb))


def _reflection_v1() -> descriptor_pb2.FileDescriptorProto:
    """`grpc.reflection.v1`: v1alpha's messages under the stable package name (the two are
    the same on the wire; grpcio ships only v1alpha, newer tools ask v1 first)."""
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    file = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    file.name, file.package = "grpc/reflection/v1/reflection.proto", new
    for message in file.message_type:
        for field in message.field:
            if field.type_name:  # set only on message fields
                field.type_name = field.type_name.replace(f".{old}.", f".{new}.")
    for method in file.service[0].method:
        method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
        method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    return file


POOL.Add(_reflection_v1())
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
FILE: FileDescriptor = POOL.FindFileByName("inference.proto")
SERVICE = FILE.services_by_name["GRPCInferenceService"]
SERVICE_NAME: str = SERVICE.full_name

pb = SimpleNamespace(
    **{
        name: message_factory.GetMessageClass(message)
        for name, message in FILE.message_types_by_name.items()
    }
)
"""The protocol's message classes, by name (`pb.ModelInferRequest`)."""


METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )
    for method in SERVICE.methods
}
"""Each method of the service: its request and response message classes."""


def method_handlers(servicer: object) -> grpc.GenericRpcHandler:
    """The service's methods, each bound to the servicer's coroutine of the same name."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            # The servicer parses (`parse`): bytes that are no message are INVALID_ARGUMENT.
            request_deserializer=None,
            response_serializer=response.SerializeToString,
        )
        for name, (_, response) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def stub(channel: grpc.Channel) -> SimpleNamespace:
    """A plain client of the service: `stub(channel).ModelInfer(pb.ModelInferRequest(...))`."""
    calls: dict[str, Callable[..., Any]] = {
        name: channel.unary_unary(
            f"/{SERVICE_NAME}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        for name, (request, response) in METHODS.items()
    }
    return SimpleNamespace(**calls)


# The typed field of `InferTensorContents` that holds each datatype (FP16 has none).
CONTENTS_FIELD: dict[Datatype, str] = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
    Datatype.BYTES: "bytes_contents",
}

STATUS: dict[str, grpc.StatusCode] = {
    "invalid_input": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_package": grpc.StatusCode.INVALID_ARGUMENT,
    "integrity_error": grpc.StatusCode.INVALID_ARGUMENT,
    "unsafe_content": grpc.StatusCode.INVALID_ARGUMENT,
    "model_load_failed": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "not_acceptable": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "unauthorized": grpc.StatusCode.UNAUTHENTICATED,
    "untrusted_package": grpc.StatusCode.PERMISSION_DENIED,
    "forbidden": grpc.StatusCode.PERMISSION_DENIED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "request_timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "store_error": grpc.StatusCode.UNAVAILABLE,
    "insufficient_storage": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def parse(message_type: Any, raw: bytes) -> Any:
    """A request message from its bytes; bytes that are not one are the caller's error."""
    try:
        return message_type.FromString(raw)
    except DecodeError:
        name = message_type.DESCRIPTOR.full_name
        raise InvalidInput(
            f"the request is not a valid {name} message (protobuf could not parse it)",
            field="request",
        ) from None


def status_of(exc: TorchportError) -> grpc.StatusCode:
    """The gRPC status of an error; INTERNAL only for what is not the caller's fault."""
    return STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


def version_of(raw: str, field: str = "model_version") -> int | None:
    """A version field: empty is the model's default, else a version number."""
    if raw == "":
        return None
    return version_number(raw, field)


def parameters_of(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(param, choice)
    return out


def decode_request(request: Any) -> tuple[InferRequest, bool]:
    """The request as torchport's, and whether it sent raw bytes (answered in kind)."""
    if not request.model_name:
        raise InvalidInput("model_name is empty", field="model_name")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "give every input's data there, or none",
            field="raw_input_contents",
        )
    if not request.inputs:
        raise InvalidInput("inputs is empty: send at least one tensor", field="inputs")
    inputs: Tensors = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{i}].name is empty", field=f"inputs[{i}].name")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice", field=name)
        datatype = _datatype(tensor.datatype, name)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}' has both contents and raw_input_contents", field=name
                )
            inputs[name] = from_raw(raw[i], datatype, shape, name=name)
        else:
            inputs[name] = _from_contents(tensor.contents, datatype, shape, name)
    outputs = [o.name for o in request.outputs] or None
    return (
        InferRequest(
            model=request.model_name,
            version=version_of(request.model_version),
            inputs=inputs,
            outputs=outputs,
            id=request.id or None,
            parameters=parameters_of(request.parameters),
        ),
        bool(raw),
    )


def _datatype(raw: str, name: str) -> Datatype:
    try:
        return Datatype(raw)
    except ValueError:
        known = ", ".join(d.value for d in Datatype)
        raise InvalidInput(
            f"input '{name}': unknown datatype {raw!r} (one of {known})", field=name
        ) from None


def _from_contents(contents: Any, datatype: Datatype, shape: list[int], name: str) -> Array:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype.value} has no typed contents; send raw_input_contents",
            field=name,
        )
    values = getattr(contents, field)
    count = element_count(shape, name=name)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, {field} has {len(values)}",
            field=name,
        )
    if datatype is Datatype.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    target = datatype.numpy
    array = np.asarray(values, dtype=_WIDE.get(target.kind, target))
    if array.dtype != target:
        # int_contents/uint_contents carry the narrower integer types: refuse values that
        # do not fit rather than wrap them.
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInput(
                f"input '{name}': values out of range for {datatype.value}", field=name
            )
        array = array.astype(target)
    return array.reshape(shape)


_WIDE = {"i": np.dtype(np.int64), "u": np.dtype(np.uint64)}


def encode_response(response: InferResponse, raw: bool) -> Any:
    """The response, as raw bytes when the request sent raw bytes (or an output has no
    typed form, FP16: the protocol allows no mix), else in typed contents."""
    outputs = response.outputs
    types = {name: Datatype.from_numpy(a.dtype) for name, a in outputs.items()}
    raw = raw or any(t not in CONTENTS_FIELD for t in types.values())
    message = pb.ModelInferResponse(
        model_name=response.model,
        model_version=str(response.version),
        id=response.id or "",
    )
    for name, array in outputs.items():
        tensor = message.outputs.add(name=name, datatype=types[name].value, shape=array.shape)
        if raw:
            message.raw_output_contents.append(to_raw(array))
            continue
        values = getattr(tensor.contents, CONTENTS_FIELD[types[name]])
        flat = array.reshape(-1)
        if types[name] is Datatype.BYTES:
            values.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        else:
            values.extend(flat.tolist())
    return message


def model_metadata(model: str, versions: list[str], signature: Signature) -> Any:
    def tensors(specs: Any) -> list[Any]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=s.datatype.value, shape=s.shape
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=model,
        versions=versions,
        platform="pytorch_torchport",
        inputs=tensors(signature.inputs),
        outputs=tensors(signature.outputs),
    )


def server_live() -> Any:
    return pb.ServerLiveResponse(live=True)


def server_ready(ready: bool) -> Any:
    return pb.ServerReadyResponse(ready=ready)


def model_ready(ready: bool) -> Any:
    return pb.ModelReadyResponse(ready=ready)


def server_metadata(name: str, version: str, extensions: list[str]) -> Any:
    return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)


def repository_index(states: Iterable[VersionState], ready_only: bool) -> Any:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=s.model, version=str(s.version), state=s.state, reason=s.reason
            )
            for s in states
            if not ready_only or s.state == "READY"
        ]
    )


def repository_loaded() -> Any:
    return pb.RepositoryModelLoadResponse()


def repository_unloaded() -> Any:
    return pb.RepositoryModelUnloadResponse()
