"""OpenAPI 3.1 documents of the HTTP routes, generated from what the server holds: every
inference route of every model with its request and answer shaped by the model's tensor
signature (names, datatypes, ranks), and the management API.

`GET /openapi.json` (inference port) covers every model; `GET /v2/models/{m}/openapi.json`
one; `GET /openapi.json` on the management port (with the token) the management API.
Paths are written out per model (`/v2/models/mlp/infer`), so that a client generator, or a
fuzzer, knows each model's inputs exactly.
"""

from __future__ import annotations

from typing import Any

from torchport.archive import RuntimeDefaults
from torchport.service.recording import RecordingConfig
from torchport.service.rollouts import RolloutSpec
from torchport.types import Datatype, Signature, TensorSpec
from torchport.version import __version__

JSON = "application/json"
OPENAPI = "3.1.0"

# A tensor's JSON element type, by its numpy kind (BYTES are object arrays of bytes).
_ELEMENT: dict[Datatype, dict[str, Any]] = {
    d: {"type": {"b": "boolean", "O": "string", "f": "number"}.get(d.numpy.kind, "integer")}
    for d in Datatype
}

ERROR = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong, in one line."},
        "code": {"type": "string", "description": "A neutral error code (invalid_input, …)."},
        "field": {"type": "string", "description": "The field or tensor at fault."},
    },
}


TORCHSERVE_ERROR = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer", "description": "The HTTP status."},
        "type": {"type": "string", "description": "TorchServe's exception name."},
        "message": {"type": "string", "description": "What was wrong, in one line."},
        "field": {"type": "string", "description": "The field or tensor at fault."},
    },
}
"""The TorchServe routes' errors, shaped as TorchServe's own."""


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    described = {
        400: "bad input, naming the field",
        401: "missing or wrong bearer token",
        403: "a package not signed by a trusted key",
        404: "no such model, version or route",
        406: "an Accept the route cannot answer in",
        408: "the body did not arrive in time",
        409: "refused in the current state",
        413: "a body over the size limit",
        415: "a body in a type the route does not read",
        503: "not loaded, overloaded or a queue full: retry (Retry-After)",
        504: "the request's deadline passed, or its batch ran too long",
        507: "a disk is full",
    }
    return {
        str(s): {
            "description": described[s],
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
        for s in statuses
    }


def _ok(schema: dict[str, Any], description: str = "done") -> dict[str, Any]:
    return {"200": {"description": description, "content": {JSON: {"schema": schema}}}}


def _nested(spec: TensorSpec) -> dict[str, Any]:
    """Data of `spec`: nested lists as deep as its rank, or flat (OIP allows both)."""
    element = _ELEMENT[spec.datatype]
    nested: dict[str, Any] = element
    for _ in spec.shape:
        nested = {"type": "array", "items": nested}
    flat = {"type": "array", "items": element}
    return nested if len(spec.shape) == 1 else {"anyOf": [nested, flat]}


def _tensor(spec: TensorSpec, with_data: bool = True) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"const": spec.name},
        "datatype": {"const": spec.datatype.value},
        "shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": len(spec.shape),
            "maxItems": len(spec.shape),
            "description": f"declared {spec.shape} (-1: any size)",
        },
        "parameters": {"type": "object"},
    }
    if with_data:
        properties["data"] = _nested(spec)
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", *(["data"] if with_data else [])],
        "properties": properties,
    }


def _oip_request(signature: Signature) -> dict[str, Any]:
    names = [s.name for s in signature.outputs]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": len(signature.inputs),
                "maxItems": len(signature.inputs),
                "items": {"oneOf": [_tensor(s) for s in signature.inputs]},
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"enum": names}, "parameters": {"type": "object"}},
                },
            },
        },
    }


def _oip_response(signature: Signature) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {"oneOf": [_tensor(s) for s in signature.outputs]},
            },
        },
    }


def _row(specs: list[TensorSpec]) -> dict[str, Any]:
    """One row (a sample without its batch axis): a value, or an object of them."""

    def one(spec: TensorSpec) -> dict[str, Any]:
        schema = _ELEMENT[spec.datatype]
        for _ in spec.shape[1:]:
            schema = {"type": "array", "items": schema}
        return schema

    if len(specs) == 1:
        return one(specs[0])
    return {
        "type": "object",
        "properties": {s.name: one(s) for s in specs},
        "required": [s.name for s in specs],
    }


VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "a version number: 1, 2, 3 …",
    "schema": {"type": "string"},
}


def model_paths(name: str, signature: Signature) -> dict[str, Any]:
    """Every inference route of one model."""
    request = {"required": True, "content": {JSON: {"schema": _oip_request(signature)}}}
    infer = {
        "summary": f"Open Inference Protocol v2: run {name}",
        "requestBody": request,
        "responses": {
            **_ok(_oip_response(signature), "the outputs"),
            **_errors(400, 404, 408, 413, 503, 504),
        },
    }
    metadata = {
        "summary": f"{name}: versions, inputs and outputs",
        "responses": {**_ok({"type": "object"}), **_errors(400, 404)},
    }
    ready = {
        "summary": f"whether {name} is loaded",
        "responses": {**_ok({"type": "object"}), **_errors(400, 404, 503)},
    }
    v1 = {
        "summary": f"KServe v1: run {name} on rows",
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["instances"],
                        "properties": {
                            "instances": {"type": "array", "items": _row(signature.inputs)}
                        },
                    }
                }
            },
        },
        "responses": {
            **_ok({"type": "object", "properties": {"predictions": {"type": "array"}}}),
            **_errors(400, 404, 408, 413, 503, 504),
        },
    }
    ts_content: dict[str, Any] = {JSON: {"schema": _row(signature.inputs)}}
    if len(signature.inputs) == 1 and signature.inputs[0].datatype is Datatype.BYTES:
        ts_content["text/plain"] = {"schema": {"type": "string"}}
    torchserve = {
        "summary": f"TorchServe: run {name} on one sample",
        "requestBody": {"required": True, "content": ts_content},
        "responses": {
            **_ok({}),
            **_errors(400, 404, 408, 413, 503, 504, schema="TorchServeError"),
        },
    }

    def versioned(operation: dict[str, Any]) -> dict[str, Any]:
        return {**operation, "parameters": [VERSION]}

    def op_id(operation: dict[str, Any], what: str) -> dict[str, Any]:
        return {**operation, "operationId": f"{what}_{name}"}

    base = f"/v2/models/{name}"
    return {
        base: {"get": op_id(metadata, "oip_metadata")},
        f"{base}/ready": {"get": op_id(ready, "oip_ready")},
        f"{base}/infer": {"post": op_id(infer, "oip_infer")},
        f"{base}/versions/{{version}}": {"get": op_id(versioned(metadata), "oip_version_metadata")},
        f"{base}/versions/{{version}}/ready": {"get": op_id(versioned(ready), "oip_version_ready")},
        f"{base}/versions/{{version}}/infer": {
            "post": op_id(versioned(infer), "oip_version_infer")
        },
        f"/v1/models/{name}": {"get": op_id(ready, "kserve_v1_status")},
        f"/v1/models/{name}:predict": {"post": op_id(v1, "kserve_v1_predict")},
        f"/v1/models/{name}/versions/{{version}}:predict": {
            "post": op_id(versioned(v1), "kserve_v1_version_predict")
        },
        f"/predictions/{name}": {"post": op_id(torchserve, "torchserve_predict")},
        f"/predictions/{name}/{{version}}": {
            "post": op_id(versioned(torchserve), "torchserve_version_predict")
        },
    }


def _plain(summary: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": _ok(schema or {"type": "object"})}}


def inference_document(models: dict[str, Signature]) -> dict[str, Any]:
    """The inference port's routes, with every model's own."""
    paths: dict[str, Any] = {
        "/v2": _plain("server metadata and extensions"),
        "/v2/health/live": _plain("the process answers"),
        "/v2/health/ready": {
            "get": {
                "summary": "every default version is loaded and the server is not stopping",
                "responses": {**_ok({"type": "object"}), **_errors(503)},
            }
        },
        "/v1/models": _plain("the models (KServe v1)"),
        "/ping": {
            "get": {
                "summary": "TorchServe's health check",
                "responses": {**_ok({"type": "object"}), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
            }
        },
    }
    for name, signature in sorted(models.items()):
        paths.update(model_paths(name, signature))
    return _document("torchport inference", paths)


def _document(title: str, paths: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "openapi": OPENAPI,
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR, "TorchServeError": TORCHSERVE_ERROR},
            **extra,
        },
    }


def management_document(models: list[str]) -> dict[str, Any]:
    """The management port's routes (every one needs the bearer token); `models`, the
    names the store holds, are the `model` parameter's examples."""
    named = {"type": "string", **({"examples": models} if models else {})}
    model = {"name": "model", "in": "path", "required": True, "schema": named}
    version = {**VERSION, "schema": {"type": "string", "examples": ["1", "2"]}}

    def op(
        summary: str,
        statuses: tuple[int, ...],
        *,
        params: tuple[dict[str, Any], ...] = (),
        body: dict[str, Any] | None = None,
        ok: int = 200,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": list(params),
            "responses": {
                str(ok): {"description": "done", "content": {JSON: {"schema": {"type": "object"}}}},
                **_errors(401, *statuses),
            },
        }
        if body is not None:
            operation["requestBody"] = {"required": True, "content": body}
        return operation

    config_schema = RuntimeDefaults.model_json_schema()
    config_schema.pop("title", None)
    rollout_schema = RolloutSpec.model_json_schema()
    rollout_schema.pop("title", None)
    recording_schema = RecordingConfig.model_json_schema()
    recording_schema.pop("title", None)

    def json_body(schema: dict[str, Any]) -> dict[str, Any]:
        return {JSON: {"schema": schema}}

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    paths = {
        "/models": {"get": op("every model, its versions and aliases", ())},
        "/models/{model}": {
            "get": op("one model, its versions and recent audit", (400, 404), params=(model,)),
            "post": {
                **op(
                    "upload a package (.tpa) as the next version",
                    (400, 403, 408, 413, 507),
                    params=(
                        model,
                        query("promote", {"type": "string", "enum": ["true", "false"]}),
                    ),
                    body=binary,
                    ok=201,
                ),
            },
        },
        "/models/{model}/default": {
            "put": op(
                "promote a version: load it, then route requests to it",
                (400, 404, 503),
                params=(model,),
                body=json_body(
                    {
                        "type": "object",
                        "required": ["version"],
                        "properties": {"version": {"type": "integer", "minimum": 1}},
                    }
                ),
            )
        },
        "/models/{model}/rollback": {
            "post": op(
                "route requests back to the previous default", (400, 404, 409, 503), params=(model,)
            )
        },
        "/models/{model}/versions/{version}": {
            "delete": op(
                "delete a version (not the default)", (400, 404, 409), params=(model, version)
            )
        },
        "/models/{model}/versions/{version}/config": {
            "put": op(
                "a version's serving settings",
                (400, 404, 503),
                params=(model, version),
                body=json_body(config_schema),
            )
        },
        "/models/{model}/versions/{version}/load": {
            "post": op(
                "serve a version beside the default", (400, 404, 503), params=(model, version)
            )
        },
        "/models/{model}/versions/{version}/unload": {
            "post": op("stop serving a version", (400, 404, 409), params=(model, version))
        },
        "/models/{model}/compare": {
            "get": op(
                "versions a and b on the model's recent requests",
                (400, 404, 503),
                params=(
                    model,
                    {**query("a", {"type": "string"}), "required": True},
                    {**query("b", {"type": "string"}), "required": True},
                ),
            )
        },
        "/models/{model}/recording": {
            "get": op(
                "the model's traffic recording: settings, counts and files",
                (400, 404),
                params=(model,),
            ),
            "put": op(
                "record a sample of the model's requests and answers (JSON Lines)",
                (400, 404),
                params=(model,),
                body=json_body(recording_schema),
            ),
            "delete": op("stop recording the model's traffic", (400, 404), params=(model,)),
        },
        "/models/{model}/replay": {
            "post": op(
                "run the model's recorded requests on a version and compare with the recorded "
                "answers",
                (400, 404, 503),
                params=(model,),
                body=json_body(
                    {
                        "type": "object",
                        "required": ["version"],
                        "properties": {
                            "version": {"type": "integer", "minimum": 1},
                            "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
                        },
                    }
                ),
            )
        },
        "/models/{model}/rollout": {
            "get": op(
                "the model's rollout (running, else the last; null if none) and its figures",
                (400, 404),
                params=(model,),
            ),
            "post": op(
                "start a rollout: a candidate version takes a share of the traffic (canary) "
                "or a copy of it (shadow), compared with the default",
                (400, 404, 409, 503),
                params=(model,),
                body=json_body(rollout_schema),
                ok=201,
            ),
        },
        "/models/{model}/rollout/{action}": {
            "post": op(
                "end the running rollout: promote the candidate, roll it back, or stop",
                (400, 404, 409, 503),
                params=(
                    model,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["promote", "rollback", "stop"]},
                    },
                ),
            )
        },
        "/audit": {
            "get": op(
                "every change, newest first",
                (400,),
                params=(query("model", {"type": "string"}), query("limit", {"type": "string"})),
            )
        },
        "/stats": {"get": op("live figures of every version", ())},
        "/models/{model}/stats": {
            "get": op("live figures of one model", (400, 404), params=(model,))
        },
        "/v2/repository/index": {"post": op("every version and its state (OIP)", ())},
        "/v2/repository/models/{model}/load": {
            "post": op("load the model's default (OIP)", (400, 404, 503), params=(model,))
        },
        "/v2/repository/models/{model}/unload": {
            "post": op("stop serving the model (OIP)", (400, 404), params=(model,))
        },
    }
    document = _document(
        "torchport management",
        paths,
        securitySchemes={"bearer": {"type": "http", "scheme": "bearer"}},
    )
    document["security"] = [{"bearer": []}]
    return document
