"""KServe: a ServingRuntime for the image and an InferenceService that uses it."""

from __future__ import annotations

from typing import Any

from torchport.deploy.kubernetes import container, volumes


def serving_runtime(
    name: str, image: str, env: dict[str, str], cpu: str, memory: str
) -> dict[str, Any]:
    main = container("kserve-container", image, env, {
        "requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory},
    })  # fmt: skip
    for key in ("startupProbe", "livenessProbe"):
        main.pop(key)
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": f"torchport-{name}"},
        "spec": {
            "supportedModelFormats": [{"name": "torchport", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2", "grpc-v2", "v1"],
            "containers": [main],
            # The root filesystem is read-only: /tmp (and /dev/shm) must be volumes.
            "volumes": volumes(),
        },
    }


def inference_service(name: str, replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "minReplicas": replicas,
                "maxReplicas": max_replicas,
                "model": {
                    "modelFormat": {"name": "torchport", "version": "1"},
                    "runtime": f"torchport-{name}",
                    "protocolVersion": "v2",
                },
            }
        },
    }
