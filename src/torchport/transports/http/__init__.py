"""HTTP: OIP v2 REST, KServe v1 and TorchServe-compatible inference; the management API."""

from torchport.transports.http.inference_app import build_inference_app
from torchport.transports.http.management_app import build_management_app

__all__ = ["build_inference_app", "build_management_app"]
