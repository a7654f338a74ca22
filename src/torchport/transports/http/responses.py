"""HTTP answers: JSON bodies, error bodies, and the one place torchport's error codes
become status codes."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from torchport.errors import TorchportError, out_of_space
from torchport.tensors import to_jsonable

log = logging.getLogger("torchport.http")

STATUS = {
    "invalid_input": 400,
    "invalid_package": 400,
    "integrity_error": 400,
    "unsafe_content": 400,
    "model_load_failed": 400,
    "too_large": 413,
    "unsupported_media_type": 415,
    "not_acceptable": 406,
    "unauthorized": 401,
    "untrusted_package": 403,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    "overloaded": 503,
    "store_error": 503,
    "insufficient_storage": 507,
    "deadline_exceeded": 504,
    "request_timeout": 408,
    "internal": 500,
}


def json_ready(array: np.ndarray) -> Any:
    """An output array for `json_response`: orjson writes a numeric array itself (a float32
    as its shortest float32 text, without a Python float per element); BYTES as text."""
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array)
    return to_jsonable(array)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(exc: TorchportError) -> Response:
    status = STATUS.get(exc.code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    if status == 408:  # the rest of a dripped body is never read: the connection goes
        headers = {"Connection": "close"}
    return json_response(exc.to_dict(), status, headers)


async def on_torchport_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorchportError)
    return error_response(exc)


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return json_response(
        {"error": f"{message}", "code": "not_found" if exc.status_code == 404 else "invalid_input"},
        exc.status_code,
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    full = out_of_space(exc, Path(tempfile.gettempdir())) if isinstance(exc, OSError) else None
    if full is not None:  # a full disk somewhere no message names: still one answer
        return error_response(full)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_response(
        {"error": f"internal error: {type(exc).__name__}", "code": "internal"}, 500
    )


HANDLERS = {
    TorchportError: on_torchport_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
