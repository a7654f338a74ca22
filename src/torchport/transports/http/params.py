"""Path parameters shared by the inference routes."""

from __future__ import annotations

from starlette.requests import Request

from torchport.errors import InvalidInput


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
