"""`torchport build`: everything that takes a package to a container platform, written
from the package's manifest: a Dockerfile for the microservice (`container`), Kubernetes
manifests (`kubernetes`: Deployment, Service, HorizontalPodAutoscaler,
PodDisruptionBudget), a KServe ServingRuntime and InferenceService (`kserve`), SageMaker
model and endpoint-config requests (`sagemaker`), and a Ray Serve config and KubeRay
RayService (`ray`).

The image runs `torchport serve /models/NAME.tpa --microservice` as a non-root user on a
read-only root filesystem (only /tmp is written); the probes use the Open Inference
Protocol's health routes: live = the process answers, ready = the model is loaded and
warmed up and the server is not stopping.
"""

from torchport.deploy.build import BuildOptions, BuildResult, build
from torchport.deploy.container import GRPC_PORT, HTTP_PORT, parse_dockerfile
from torchport.deploy.ray import serve_config

__all__ = [
    "GRPC_PORT",
    "HTTP_PORT",
    "BuildOptions",
    "BuildResult",
    "build",
    "parse_dockerfile",
    "serve_config",
]
