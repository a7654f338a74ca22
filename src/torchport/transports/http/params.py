"""Path parameters and headers shared by the inference routes."""

from __future__ import annotations

from starlette.requests import Request

from torchport.errors import InvalidInput
from torchport.service.inference import timeout_parameter
from torchport.types import version_number


def header(request: Request, name: str) -> str | None:
    """The first `name` header (lower case), from one dict made per request: Starlette's
    `headers.get` scans and decodes every header on each call, and an inference request
    asks for five."""
    return headers(request).get(name)


def headers(request: Request) -> dict[str, str]:
    """Every header of the request, by lower-case name (the first of repeated ones)."""
    found: dict[str, str] | None = request.scope.get("torchport.headers")
    if found is None:
        found = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])
        }
        request.scope["torchport.headers"] = found
    return found


def model_and_version(request: Request) -> tuple[str, int | None]:
    model = request.path_params["model"]
    raw = request.path_params.get("version")
    if raw is None or raw == "":
        return model, None
    return model, version_number(raw)


TIMEOUT_HEADER = "x-timeout-ms"


def timeout_seconds(request: Request, parameters: dict[str, object] | None = None) -> float | None:
    """A request's deadline: the `X-Timeout-Ms` header, or OIP's `timeout` parameter (µs)."""
    raw = header(request, TIMEOUT_HEADER)
    if raw is not None:
        try:
            ms = float(raw)
        except ValueError:
            raise InvalidInput("X-Timeout-Ms is not a number", field="X-Timeout-Ms") from None
        if not ms > 0:
            raise InvalidInput("X-Timeout-Ms must be positive", field="X-Timeout-Ms")
        return ms / 1000
    return timeout_parameter(parameters or {})
