"""Open Inference Protocol v2 REST bodies: JSON tensors and the binary tensor data extension.

With the extension, a body is a JSON header (`Inference-Header-Content-Length` bytes) followed
by raw tensor bytes, in order, for each tensor whose `parameters.binary_data_size` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from torchport.errors import InvalidInput
from torchport.service.inference import InferRequest, InferResponse
from torchport.tensors import element_count, from_raw, to_array, to_raw
from torchport.transports.http.body import parse_json
from torchport.types import Array, Datatype, Tensors

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class OutputFormat:
    """Which outputs go back as binary data."""

    all_binary: bool
    binary: frozenset[str]

    def is_binary(self, name: str) -> bool:
        return self.all_binary or name in self.binary


def decode_request(
    body: bytes, header_length: str | None, model: str, version: int | None
) -> tuple[InferRequest, OutputFormat]:
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InvalidInput(
                "Inference-Header-Content-Length is not a number",
                field="Inference-Header-Content-Length",
            ) from None
        if not 0 < split <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {split} is outside the body of {len(body)} bytes",
                field="Inference-Header-Content-Length",
            )
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    return decode_document(_json_object(header), binary, model, version)


def decode_document(
    doc: dict[str, Any], binary: memoryview, model: str, version: int | None
) -> tuple[InferRequest, OutputFormat]:
    """A request from its parsed JSON header and the binary tensor data after it."""
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise InvalidInput("'inputs' must be a non-empty list of tensors", field="inputs")
    offset = 0
    inputs: Tensors = {}
    for i, item in enumerate(inputs_doc):
        array, used = _decode_input(item, i, binary[offset:])
        offset += used
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice", field=name)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data after the last tensor", field="body"
        )
    parameters = _parameters(doc.get("parameters"), "parameters")
    outputs, binary_names = _requested_outputs(doc.get("outputs"))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string", field="id")
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        parameters=parameters,
    )
    all_binary = parameters.get("binary_data_output") is True
    return request, OutputFormat(all_binary=all_binary, binary=frozenset(binary_names))


def _json_object(raw: bytes) -> dict[str, Any]:
    doc = parse_json(raw)
    if not isinstance(doc, dict):
        raise InvalidInput("the request must be a JSON object", field="body")
    return doc


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{where}' must be an object", field=where)
    return value


def _decode_input(item: Any, index: int, binary: memoryview) -> tuple[Array, int]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object", field=where)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string", field=f"{where}.name")
    try:
        datatype = Datatype(str(item.get("datatype")))
    except ValueError:
        raise InvalidInput(
            f"input '{name}': datatype {item.get('datatype')!r} is not an OIP datatype "
            f"({', '.join(d.value for d in Datatype)})",
            field=name,
        ) from None
    shape = item.get("shape")
    if not isinstance(shape, list):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of integers", field=name)
    count = element_count(shape, name=name)
    params = _parameters(item.get("parameters"), f"{where}.parameters")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary):
            raise InvalidInput(
                f"input '{name}': binary_data_size {size!r} does not fit the {len(binary)} "
                "bytes of binary data left",
                field=name,
            )
        return from_raw(binary[:size], datatype, shape, name=name), size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has no 'data' and no binary_data_size", field=name)
    array = to_array(item["data"], datatype, name=name)
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, 'data' holds {array.size}",
            field=name,
        )
    return array.reshape(shape), 0


def _requested_outputs(value: Any) -> tuple[list[str] | None, list[str]]:
    if value is None:
        return None, []
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list", field="outputs")
    names: list[str] = []
    binary: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(
                f"outputs[{i}] must be an object with a 'name'", field=f"outputs[{i}]"
            )
        names.append(item["name"])
        if _parameters(item.get("parameters"), f"outputs[{i}].parameters").get("binary_data"):
            binary.append(item["name"])
    return names, binary


def encode_response(response: InferResponse, fmt: OutputFormat) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary extension used when any output asks for it)."""
    outputs = []
    buffers: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = Datatype.from_numpy(array.dtype)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype.value,
            "shape": list(array.shape),
        }
        if fmt.is_binary(name):
            raw = to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = _json_data(name, array)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": str(response.version),
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, {"content-type": "application/json"}
    return header + b"".join(buffers), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def _json_data(name: str, array: Array) -> Any:
    flat = array.reshape(-1)
    if array.dtype != object:
        return np.ascontiguousarray(flat)
    try:
        return [item.decode("utf-8") for item in flat]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}' holds bytes that are not UTF-8: request it with binary_data",
            field=name,
        ) from None
