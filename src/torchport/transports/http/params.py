"""Path parameters shared by the inference routes."""

from __future__ import annotations

from starlette.requests import Request

from torchport.errors import InvalidInput
from torchport.service.dataplane import timeout_parameter


def model_and_version(request: Request) -> tuple[str, int | None]:
    model = request.path_params["model"]
    raw = request.path_params.get("version")
    if raw is None or raw == "":
        return model, None
    try:
        version = int(raw)
    except ValueError:
        raise InvalidInput(f"version {raw!r} is not a version number", field="version") from None
    if version < 1:
        raise InvalidInput(
            f"version {version} is not a version number (1, 2, 3 …)", field="version"
        )
    return model, version


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
