"""Kubernetes manifests for the microservice: Deployment, Service, HorizontalPodAutoscaler
and PodDisruptionBudget."""

from __future__ import annotations

import re
from typing import Any

from torchport.deploy.container import (
    DRAIN_SECONDS,
    GRPC_PORT,
    HTTP_PORT,
    SHM_SIZE_MIB,
    TMP_SIZE,
    UID,
    UNREADY_SECONDS,
)
from torchport.errors import InvalidInput


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "model"}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def container(
    name: str, image: str, env: dict[str, str], resources: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": resources,
        # Started: the model loaded (up to 10 min); ready: loaded and not stopping; live:
        # the process answers. A stopping pod turns unready first and drains.
        "startupProbe": _probe("/v2/health/ready", 5, 120),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": volume_mounts(),
    }


POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Every pod torchport writes: its non-root user, and the runtime's default seccomp."""


def volume_mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]


def volumes(shm: str = f"{SHM_SIZE_MIB}Mi") -> list[dict[str, Any]]:
    """A writable `/tmp` (the root filesystem is read-only) and a memory-backed `/dev/shm`
    of `shm` (worker processes' tensors; Ray's object store)."""
    return [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
    ]


def deployment(
    name: str,
    image: str,
    env: dict[str, str],
    replicas: int,
    cpu: str,
    cpu_limit: str,
    memory: str,
) -> dict[str, Any]:
    resources = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": UNREADY_SECONDS + DRAIN_SECONDS + 5,
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "containers": [container(name, image, env, resources)],
                    "volumes": volumes(),
                },
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
            ],
        },
    }


def autoscaler(name: str, replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def disruption_budget(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(name)}},
    }


def dns_name(model: str) -> str:
    """A model name as a Kubernetes object name (DNS-1123 label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:53]
    if not name:
        raise InvalidInput(f"model name {model!r} has nothing usable as a Kubernetes name")
    return name
