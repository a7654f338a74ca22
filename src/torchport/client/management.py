"""`ManagementClient`: the management API from Python (what `torchport models` uses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from torchport import errors
from torchport.errors import TorchportError

_BY_CODE: dict[str, type[TorchportError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, TorchportError)
}


class ManagementClient:
    """Calls a torchport server's management port with a bearer token.

    Errors come back as the same `torchport.errors` classes the server raised.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TorchportError(
                f"cannot reach the management API at {self.url} ({exc}); "
                "is `torchport serve` running?"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200] or f"HTTP {response.status_code}"}
        if response.is_error:
            code = body.get("code", "internal") if isinstance(body, dict) else "internal"
            message = body.get("error", str(body)) if isinstance(body, dict) else str(body)
            raise _BY_CODE.get(code, TorchportError)(message, field=body.get("field"))
        return body

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/models")["models"])

    def overview(self) -> dict[str, Any]:
        """Every model (`models`), and the server's GPUs with their memory and use now
        (`devices`: empty on a machine without one)."""
        body = self._call("GET", "/models")
        return {"models": body["models"], "devices": body.get("devices", [])}

    def get_model(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/models/{name}"))

    def upload(
        self, package: Path, *, name: str | None = None, promote: bool = False
    ) -> dict[str, Any]:
        """Upload a package file; it is registered under `name` (default: its own name)."""
        if name is None:
            from torchport.archive import read_package

            name = read_package(package).manifest.name
        with package.open("rb") as f:
            return dict(
                self._call(
                    "POST",
                    f"/models/{name}",
                    content=f,
                    params={"promote": "true"} if promote else None,
                    headers={"Content-Type": "application/octet-stream"},
                )
            )

    def promote(self, name: str, version: int) -> dict[str, Any]:
        return dict(self._call("PUT", f"/models/{name}/default", json={"version": version}))

    def rollback(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/models/{name}/rollback"))

    def delete(self, name: str, version: int) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/models/{name}/versions/{version}"))

    def load(self, name: str, version: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/models/{name}/versions/{version}/load"))

    def unload(self, name: str, version: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/models/{name}/versions/{version}/unload"))

    def set_config(self, name: str, version: int, **config: Any) -> dict[str, Any]:
        return dict(self._call("PUT", f"/models/{name}/versions/{version}/config", json=config))

    def start_rollout(
        self,
        name: str,
        candidate: int,
        *,
        mode: str = "canary",
        share: float = 0.1,
        sticky_header: str | None = None,
        rules: dict[str, Any] | None = None,
        report_only: bool = False,
    ) -> dict[str, Any]:
        """Start a rollout of `candidate` (`rules`: the defaults when None, unless
        `report_only`); the rollout as the server recorded it."""
        spec: dict[str, Any] = {"candidate": candidate, "mode": mode, "share": share}
        if sticky_header:
            spec["sticky_header"] = sticky_header
        if report_only:
            spec["rules"] = None
        elif rules is not None:
            spec["rules"] = rules
        return dict(self._call("POST", f"/models/{name}/rollout", json=spec)["rollout"])

    def rollout(self, name: str) -> dict[str, Any]:
        """The model's rollout (running, else the last) and its live figures."""
        return dict(self._call("GET", f"/models/{name}/rollout"))

    def end_rollout(self, name: str, action: str) -> dict[str, Any]:
        """`promote`, `rollback` or `stop` the model's running rollout."""
        return dict(self._call("POST", f"/models/{name}/rollout/{action}")["rollout"])

    def audit(self, model: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if model:
            params["model"] = model
        return list(self._call("GET", "/audit", params=params)["audit"])
