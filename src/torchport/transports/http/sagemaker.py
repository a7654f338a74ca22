"""The SageMaker container contract (microservice mode): `POST /invocations` for the one
model served, in the content types SageMaker clients send, answered in the type `Accept`
asks for. (`GET /ping` is the TorchServe route's: 200 when ready.)

Requests:
- `application/json`: `{"instances": [...]}` (rows, as KServe v1 and SageMaker's JSON
  serializer send), an Open Inference Protocol body (`{"inputs": [...]}`), an object from
  input name to a nested list (torchport's own example format), or a bare list of rows;
- `text/csv`: one row per line, numbers, for a model with one numeric input whose shape
  past the batch is fixed (each line is reshaped to it);
- `application/x-npy`: a NumPy array file (never with pickles), the batch of the one input;
- any other type (`application/octet-stream`, `text/plain`, `image/*`, …): the raw body as
  one row of the model's one `BYTES` input.

Answers: JSON by default (`{"predictions": [...]}` for rows, or the format the request came
in), `text/csv` (one line per row, outputs flattened side by side), `application/x-npy`
(the one output).
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from torchport.errors import InvalidInput, NotAcceptable, UnsupportedMediaType
from torchport.raw_io import is_raw, request_row
from torchport.service.inference import InferenceService, InferRequest
from torchport.tensors import element_count, to_array, weight
from torchport.transports.http.body import BodyLimit, parse_json, read_body
from torchport.transports.http.kserve_v1 import instances_to_inputs, outputs_to_predictions
from torchport.transports.http.oip_codec import decode_document, encode_response
from torchport.transports.http.params import headers as request_headers
from torchport.transports.http.params import timeout_seconds
from torchport.transports.http.responses import json_ready, json_response
from torchport.transports.http.torchserve import raw_answer
from torchport.types import Datatype, Signature, Tensors, TensorSpec

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
FORM = "application/x-www-form-urlencoded"
ANSWERS = (JSON, CSV, NPY)


def routes(service: InferenceService, max_body: BodyLimit, model: str) -> list[BaseRoute]:
    async def invocations(request: Request) -> Response:
        body = await read_body(request, max_body)
        signature = await service.signature(model)
        timeout = timeout_seconds(request)
        if is_raw(signature):
            # A SageMaker script (or TorchServe handler): body and headers as sent, its
            # answer as it wrote it.
            raw = request_row(body, request_headers(request))
            response = await service.infer(InferRequest(model, raw, None, timeout_s=timeout))
            return raw_answer(response.outputs)
        content_type = _media_type(request.headers.get("content-type")) or JSON
        answer = _accepted(request.headers.get("accept"))
        if content_type == FORM and body.lstrip()[:1] in (b"{", b"["):
            content_type = JSON  # what `curl -d` sends with a JSON body
        size = len(body)
        if content_type == JSON and body.lstrip().startswith(b"{") and b'"inputs"' in body:
            doc = await service.offload(size, parse_json, body)
            if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
                # An Open Inference Protocol body: answered as one, unless asked otherwise.
                infer_request, fmt = await service.offload(
                    size, decode_document, doc, memoryview(b""), model, None
                )
                response = await service.infer(replace(infer_request, timeout_s=timeout))
                out = weight(response.outputs)
                if answer == JSON:
                    content, headers = await service.offload(out, encode_response, response, fmt)
                    return Response(content, headers=headers)
                return await service.offload(out, _answer, response.outputs, answer, False)
            inputs, named = await service.offload(size, _from_json, doc, signature)
        else:
            inputs, named = await service.offload(size, _decode, body, content_type, signature)
        response = await service.infer(
            InferRequest(model=model, version=None, inputs=inputs, timeout_s=timeout)
        )
        return await service.offload(
            weight(response.outputs), _answer, response.outputs, answer, named
        )

    return [Route("/invocations", invocations, methods=["POST"])]


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def _accepted(header: str | None) -> str:
    """The first type of `Accept` that can be written (`*/*` and none: JSON)."""
    if not header:
        return JSON
    wanted = [_media_type(part) for part in header.split(",")]
    for media in wanted:
        if media in ANSWERS:
            return media
        if media in ("*/*", "application/*"):
            return JSON
        if media == "text/*":
            return CSV
    raise NotAcceptable(
        f"cannot answer in {header!r}: accept one of {', '.join(ANSWERS)}", field="Accept"
    )


def _single(signature: Signature, what: str) -> TensorSpec:
    if len(signature.inputs) != 1:
        names = ", ".join(s.name for s in signature.inputs)
        raise UnsupportedMediaType(
            f"{what} carries one input, and this model takes several ({names}): send JSON",
            field="Content-Type",
        )
    return signature.inputs[0]


def _decode(body: bytes, content_type: str, signature: Signature) -> tuple[Tensors, bool]:
    """The inputs, and whether the request named them (then the answer names outputs)."""
    if not body:
        raise InvalidInput("the request body is empty", field="body")
    if content_type == JSON or content_type.endswith("+json"):
        return _from_json(parse_json(body), signature)
    if content_type == CSV:
        return {(spec := _single(signature, "CSV")).name: _csv_rows(body, spec)}, False
    if content_type == NPY:
        spec = _single(signature, "a .npy array")
        return {spec.name: to_array(_npy(body), spec.datatype, name=spec.name)}, False
    spec = _single(signature, f"a {content_type or 'raw'} body")
    if spec.datatype is not Datatype.BYTES:
        raise UnsupportedMediaType(
            f"Content-Type {content_type or '(none)'!r} is raw bytes, and input '{spec.name}' "
            f"is {spec.datatype.value}: send {JSON}, {CSV} or {NPY}",
            field="Content-Type",
        )
    row = np.empty(1, dtype=object)
    row[0] = body
    return {spec.name: row}, False


def _npy(body: bytes) -> np.ndarray:
    """A `.npy` body, its header checked against its length before anything is allocated
    (`np.load` would first try to allocate whatever shape the header claims)."""
    stream = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(stream)
    except ValueError as exc:
        raise InvalidInput(f"the body is not a .npy array: {exc}", field="body") from None
    if dtype.hasobject:
        raise InvalidInput("the .npy array holds Python objects (pickles): refused", field="body")
    count = element_count(list(shape), name="body")
    data = memoryview(body)[stream.tell() :]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"the .npy header declares shape {list(shape)} of {dtype} ({count * dtype.itemsize} "
            f"bytes), the body holds {len(data)}",
            field="body",
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _from_json(doc: Any, signature: Signature) -> tuple[Tensors, bool]:
    if isinstance(doc, dict) and "instances" in doc:
        return instances_to_inputs(doc["instances"], signature), False
    if isinstance(doc, list):
        return instances_to_inputs(doc, signature), False
    if isinstance(doc, dict) and doc:
        known = {s.name for s in signature.inputs}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InvalidInput(
                f"unknown input '{unknown[0]}' (inputs: {', '.join(sorted(known))}); or "
                'send {"instances": [...]}',
                field=unknown[0],
            )
        inputs = {k: to_array(v, signature.input(k).datatype, name=k) for k, v in doc.items()}
        return inputs, True
    raise InvalidInput(
        'send {"instances": [...]}, an Open Inference Protocol body, or an object from '
        "input name to data",
        field="body",
    )


def _csv_rows(body: bytes, spec: TensorSpec) -> np.ndarray:
    try:
        lines = [r for r in csv.reader(io.StringIO(body.decode("utf-8"))) if r]
    except UnicodeDecodeError:
        raise InvalidInput("the CSV body is not UTF-8", field="body") from None
    except csv.Error as exc:  # a field past csv.field_size_limit(), a stray NUL …
        raise InvalidInput(f"the CSV body cannot be read: {exc}", field="body") from None
    if not lines:
        raise InvalidInput("the CSV body has no rows", field="body")
    if spec.datatype is Datatype.BYTES:
        texts = np.empty(len(lines), dtype=object)
        texts[:] = [",".join(r).encode() for r in lines]
        return texts
    row_shape = spec.shape[1:]
    if any(d < 0 for d in row_shape):
        raise UnsupportedMediaType(
            f"input '{spec.name}' has a dynamic axis past the batch {spec.shape}: send JSON",
            field="Content-Type",
        )
    try:
        rows = [[float(v) for v in r] for r in lines]
    except ValueError as exc:
        raise InvalidInput(f"the CSV body holds a value that is not a number: {exc}",
                           field="body") from None  # fmt: skip
    width = int(np.prod(row_shape)) if row_shape else 1
    for i, r in enumerate(rows):
        if len(r) != width:
            raise InvalidInput(
                f"CSV row {i + 1} has {len(r)} values; input '{spec.name}' needs {width} a row",
                field=spec.name,
            )
    array = np.array(rows, np.float64).reshape([len(rows), *row_shape])
    return to_array(array, spec.datatype, name=spec.name)


def _answer(outputs: Tensors, answer: str, named: bool) -> Response:
    if answer == NPY:
        if len(outputs) != 1:
            raise NotAcceptable(
                f"{NPY} holds one array and this model has {len(outputs)} outputs: accept JSON",
                field="Accept",
            )
        array = next(iter(outputs.values()))
        if array.dtype == object:
            raise NotAcceptable(f"a BYTES output cannot be sent as {NPY}", field="Accept")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return Response(buffer.getvalue(), media_type=NPY)
    if answer == CSV:
        rows = len(next(iter(outputs.values())))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for i in range(rows):
            cells: list[Any] = []
            for array in outputs.values():
                cells += [_cell(v) for v in np.asarray(array[i]).reshape(-1).tolist()]
            writer.writerow(cells)
        return Response(text.getvalue(), media_type=CSV)
    if named:
        return json_response({k: json_ready(v) for k, v in outputs.items()})
    return json_response({"predictions": outputs_to_predictions(outputs)})


def _cell(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
