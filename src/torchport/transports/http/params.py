"""Path parameters shared by the inference routes."""

from __future__ import annotations

from starlette.requests import Request

from torchport.errors import InvalidInput
from torchport.service.inference import timeout_parameter
from torchport.types import version_number


def model_and_version(request: Request) -> tuple[str, int | None]:
    model = request.path_params["model"]
    raw = request.path_params.get("version")
    if raw is None or raw == "":
        return model, None
    return model, version_number(raw)


TIMEOUT_HEADER = "x-timeout-ms"


def timeout_seconds(request: Request, parameters: dict[str, object] | None = None) -> float | None:
    """A request's deadline: the `X-Timeout-Ms` header, or OIP's `timeout` parameter (µs)."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            ms = float(raw)
        except ValueError:
            raise InvalidInput("X-Timeout-Ms is not a number", field="X-Timeout-Ms") from None
        if not ms > 0:
            raise InvalidInput("X-Timeout-Ms must be positive", field="X-Timeout-Ms")
        return ms / 1000
    return timeout_parameter(parameters or {})
