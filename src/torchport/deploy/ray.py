"""Ray Serve: the Serve config of a package's application (`torchport ray deploy`,
`serve deploy`) and a KubeRay RayService that runs it."""

from __future__ import annotations

from typing import Any

import yaml

from torchport.deploy.container import MODELS_DIR
from torchport.deploy.gpus import GpuRequest
from torchport.deploy.kubernetes import POD_SECURITY, labels, volume_mounts, volumes

RAY_VERSION = "2.60.0"
SERVE_PORT = 8000
RAY_IMPORT_PATH = "torchport.ray_app:build_app"


def serve_config(
    name: str,
    package: str,
    *,
    replicas: int | None = None,
    max_replicas: int | None = None,
    torch_threads: int = 1,
    max_request_bytes: int | None = None,
    route_prefix: str | None = None,
    http_port: int = 8000,
    num_gpus: int = 0,
) -> dict[str, Any]:
    """A Serve config (`serve deploy` / KubeRay's `serveConfigV2`) for one package.
    Replicas and autoscaling left out come from the package's runtime config."""
    scale = {"replicas": replicas, "max_replicas": max_replicas}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": http_port},
        "applications": [
            {
                "name": f"torchport-{name}",
                "route_prefix": route_prefix or f"/{name}",
                "import_path": RAY_IMPORT_PATH,
                "args": {
                    "package": package,
                    "name": name,
                    **{k: v for k, v in scale.items() if v is not None},
                    "torch_threads": torch_threads,
                    **({"max_request_bytes": max_request_bytes} if max_request_bytes else {}),
                    **({"num_gpus": num_gpus} if num_gpus else {}),
                },
            }
        ],
    }


def ray_service(
    name: str,
    image: str,
    package_name: str,
    replicas: int,
    max_replicas: int,
    cpu: str,
    cpu_limit: str,
    memory: str,
    *,
    gpus: GpuRequest | None = None,
) -> dict[str, Any]:
    """A KubeRay `RayService`: a Ray cluster running this image, and the package as a
    Ray Serve application on it (`torchport ray deploy`'s Serve config). With `gpus`, each
    replica asks Ray for them (`num_gpus`) and the worker pods ask Kubernetes."""
    # Serve scales replicas between the bounds; KubeRay adds worker pods to hold them.
    config = serve_config(name, f"{MODELS_DIR}/{package_name}", replicas=replicas,
                          max_replicas=max_replicas, http_port=SERVE_PORT,
                          num_gpus=gpus.count if gpus else 0)  # fmt: skip

    def pod(container: str, ports: list[tuple[str, int]], *, head: bool) -> dict[str, Any]:
        resources = {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu_limit, "memory": memory},
        }
        return {
            "spec": {
                # The head's autoscaler sidecar talks to the Kubernetes API with the pod's
                # service account; workers need none.
                "automountServiceAccountToken": head,
                "securityContext": POD_SECURITY,
                "containers": [
                    {
                        "name": container,
                        "image": image,
                        "ports": [{"name": n, "containerPort": p} for n, p in ports],
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "resources": resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        # Ray's session files go to /tmp/ray, its object store to /dev/shm.
                        "volumeMounts": volume_mounts(),
                    }
                ],
                "volumes": volumes(shm=memory),
            }
        }

    worker = pod("ray-worker", [], head=False)
    if gpus is not None:  # the head runs no replicas: only workers need GPUs
        gpus.pod(worker["spec"])
        gpus.container(worker["spec"]["containers"][0])
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                # KubeRay (1.5.1 and later) makes a Secret with a random token and gives it
                # to every Ray container: the GCS and client ports refuse anyone without it.
                "authOptions": {"mode": "token"},
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # The head runs no replicas; its dashboard stays inside the pod.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1"},
                    "template": pod(
                        "ray-head",
                        [("gcs", 6379), ("client", 10001), ("serve", SERVE_PORT)],
                        head=True,
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "replicas",
                        "replicas": replicas,
                        "minReplicas": replicas,
                        "maxReplicas": max_replicas,
                        "rayStartParams": {"num-gpus": str(gpus.count)} if gpus else {},
                        "template": worker,
                    }
                ],
            },
        },
    }
