"""Inference and management services: what every transport calls. Knows nothing of HTTP or gRPC."""

from torchport.service.management import Management, UploadReport

__all__ = ["Management", "UploadReport"]
