"""HTTP: OIP v2 REST, KServe v1 and TorchServe-compatible inference; the management API.

Imported lazily: a front-end process builds the inference app only, without the
management app's imports (the model code, torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchport.transports.http.inference_app import build_inference_app
    from torchport.transports.http.management_app import build_management_app

_HOMES = {"build_inference_app": "inference_app", "build_management_app": "management_app"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'torchport.transports.http' has no attribute {name!r}")
    return getattr(importlib.import_module(f"torchport.transports.http.{home}"), name)


__all__ = ["build_inference_app", "build_management_app"]
