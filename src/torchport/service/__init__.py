"""The services every transport calls: the data plane (inference), management, and the
registry of loaded versions behind them. Knows nothing of HTTP or gRPC."""

from torchport.service.dataplane import DataPlane, InferRequest, InferResponse, ModelMetadata
from torchport.service.management import Management, UploadReport
from torchport.service.registry import Registry, RequestLoads

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
