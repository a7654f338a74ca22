"""The services every transport calls: the data plane (inference), management, and the
registry of loaded versions behind them. Knows nothing of HTTP or gRPC.

Imported lazily: a front-end process imports `service.inference` and `service.remote`
only, never the registry and the model code (torch) behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchport.service.dataplane import DataPlane
    from torchport.service.inference import InferRequest, InferResponse, ModelMetadata
    from torchport.service.management import Management, UploadReport
    from torchport.service.registry import Registry, RequestLoads

_HOMES = {
    "DataPlane": "dataplane",
    "InferRequest": "inference",
    "InferResponse": "inference",
    "ModelMetadata": "inference",
    "Management": "management",
    "UploadReport": "management",
    "Registry": "registry",
    "RequestLoads": "registry",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'torchport.service' has no attribute {name!r}")
    return getattr(importlib.import_module(f"torchport.service.{home}"), name)


__all__ = [
    "DataPlane",
    "InferRequest",
    "InferResponse",
    "Management",
    "ModelMetadata",
    "Registry",
    "RequestLoads",
    "UploadReport",
]
