"""`torchport build`: everything that takes a package to a container platform, written
from the package's manifest: a Dockerfile for the microservice, Kubernetes manifests
(Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget), a KServe
ServingRuntime and InferenceService, and SageMaker model and endpoint-config requests.

The image runs `torchport serve /models/NAME.tpa --microservice` as a non-root user on a
read-only root filesystem (only /tmp is written); the probes use the Open Inference
Protocol's health routes: live = the process answers, ready = the model is loaded and
warmed up and the server is not stopping.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchport.archive import ModelKind, read_package
from torchport.errors import InvalidInput
from torchport.version import __version__

HTTP_PORT = 8080
GRPC_PORT = 8081
UID = 10001
UNREADY_SECONDS = 5
DRAIN_SECONDS = 30
MODELS_DIR = "/models"
TORCH_VERSION = "2.13.0"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


@dataclass(frozen=True)
class BuildOptions:
    image: str | None = None
    """Image name (default: torchport-NAME:VERSION-of-torchport)."""
    replicas: int = 2
    max_replicas: int = 5
    cpu: str = "1"
    memory: str | None = None
    """Memory request and limit (default: from the package's size)."""
    cpu_limit: str | None = None
    wheel: Path | None = None
    """A torchport wheel to install in the image instead of the release from PyPI."""
    ray: bool = False
    """Also write a KubeRay RayService (the image then installs torchport[ray])."""


@dataclass(frozen=True)
class BuildResult:
    out: Path
    files: list[Path]
    image: str


def build(package: Path, out: Path, options: BuildOptions | None = None) -> BuildResult:
    """Verify the package and write the deployment files for it under `out`."""
    opts = options or BuildOptions()
    manifest = read_package(package).manifest  # verified: hashes, manifest
    name = _dns_name(manifest.name)
    for field, value in (("cpu", opts.cpu), ("memory", opts.memory), ("cpu_limit", opts.cpu_limit)):
        if value is not None and not _QUANTITY.match(value):
            raise InvalidInput(f"--{field.replace('_', '-')} {value!r} is not a quantity "
                               "(e.g. 500m, 2, 1Gi)", field=field)  # fmt: skip
    if not 1 <= opts.replicas <= opts.max_replicas:
        raise InvalidInput("replicas must be at least 1 and at most --max-replicas",
                           field="replicas")  # fmt: skip
    if opts.wheel is not None and not opts.wheel.is_file():
        raise InvalidInput(f"wheel {opts.wheel} does not exist", field="wheel")
    image = opts.image or f"torchport-{name}:{__version__}"
    memory = opts.memory or _memory_for(package.stat().st_size)
    cpu_limit = opts.cpu_limit or _double(opts.cpu)
    wanted = (["onnx"] if manifest.model.kind is ModelKind.ONNX else []) + (
        ["ray"] if opts.ray else []
    )
    extras = f"[{','.join(wanted)}]" if wanted else ""
    out.mkdir(parents=True, exist_ok=True)
    package_name = f"{name}.tpa"
    shutil.copyfile(package, out / package_name)
    wheel = None
    if opts.wheel is not None:
        wheel = opts.wheel.name
        shutil.copyfile(opts.wheel, out / wheel)
    env = _environment(package_name)
    written = {
        "Dockerfile": dockerfile(package_name, env, extras, wheel),
        ".dockerignore": "*\n!*.tpa\n!*.whl\n",
        "k8s/deployment.yaml": _yaml(
            deployment(name, image, env, opts.replicas, opts.cpu, cpu_limit, memory)
        ),
        "k8s/service.yaml": _yaml(service(name)),
        "k8s/hpa.yaml": _yaml(autoscaler(name, opts.replicas, opts.max_replicas)),
        "k8s/pdb.yaml": _yaml(disruption_budget(name)),
        "kserve/servingruntime.yaml": _yaml(serving_runtime(name, image, env, opts.cpu, memory)),
        "kserve/inferenceservice.yaml": _yaml(
            inference_service(name, opts.replicas, opts.max_replicas)
        ),
        "sagemaker/model.json": _json(sagemaker_model(name, image, env)),
        "sagemaker/endpoint-config.json": _json(sagemaker_endpoint_config(name, opts.replicas)),
        "README.md": _readme(name, image, package_name),
    }
    if opts.ray:
        written["ray/rayservice.yaml"] = _yaml(
            ray_service(name, image, package_name, opts.replicas, opts.max_replicas,
                        opts.cpu, cpu_limit, memory)
        )  # fmt: skip
    files = []
    for relative, text in written.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files.append(path)
    return BuildResult(out, [out / package_name, *files], image)


# -- the container ----------------------------------------------------------------------


def _environment(package_name: str) -> dict[str, str]:
    """How the container configures torchport: environment variables only."""
    return {
        "TORCHPORT_HOST": "0.0.0.0",  # a container's port is reached from outside it
        "TORCHPORT_HTTP_PORT": str(HTTP_PORT),
        "TORCHPORT_GRPC_PORT": str(GRPC_PORT),
        "TORCHPORT_UNREADY_SECONDS": str(UNREADY_SECONDS),
        "TORCHPORT_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "TORCHPORT_LOG_FORMAT": "json",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def command(package_name: str) -> list[str]:
    return ["torchport", "serve", f"{MODELS_DIR}/{package_name}", "--microservice"]


def dockerfile(package_name: str, env: dict[str, str], extras: str, wheel: str | None) -> str:
    if wheel:
        install = (
            f"COPY {wheel} /tmp/\n"
            f"RUN pip install --no-cache-dir '/tmp/{wheel}{extras}' && rm /tmp/{wheel}"
        )
    else:
        install = f"RUN pip install --no-cache-dir 'torchport{extras}=={__version__}'"
    env_lines = " \\\n    ".join(f"{k}={json.dumps(v)}" for k, v in env.items())
    probe = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/v2/health/ready', timeout=2)"
    )
    return f"""# The {package_name} microservice: `torchport build` wrote this file.
FROM python:3.11-slim

# CPU torch first, from PyTorch's CPU index, so nothing pulls a CUDA build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \\
    torch=={TORCH_VERSION}
{install}

# The package, read-only, verified now (every hash, the manifest) so a bad one fails the build.
COPY --chmod=0444 {package_name} {MODELS_DIR}/{package_name}
RUN torchport inspect {MODELS_DIR}/{package_name}

RUN useradd --uid {UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torchport
USER {UID}:{UID}
ENV {env_lines}
EXPOSE {HTTP_PORT} {GRPC_PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \\
    CMD ["python", "-c", "{probe}"]
STOPSIGNAL SIGTERM
CMD {json.dumps(command(package_name))}
"""


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[str]]:
    """The ENV and exec-form CMD of a Dockerfile written by `dockerfile` (for running the
    container's command outside a container, as the tests do)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in joined.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line[4:]):
                env[key] = json.loads(value) if value.startswith('"') else value
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
    return env, cmd


# -- Kubernetes --------------------------------------------------------------------------


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "model"}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _container(
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
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


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
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": _labels(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": UNREADY_SECONDS + DRAIN_SECONDS + 5,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_container(name, image, env, resources)],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "type": "ClusterIP",
            "selector": _labels(name),
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
        "metadata": {"name": name, "labels": _labels(name)},
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
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}},
    }


# -- KServe ------------------------------------------------------------------------------


def serving_runtime(
    name: str, image: str, env: dict[str, str], cpu: str, memory: str
) -> dict[str, Any]:
    container = _container("kserve-container", image, env, {
        "requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory},
    })  # fmt: skip
    for key in ("startupProbe", "livenessProbe", "volumeMounts"):
        container.pop(key)
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": f"torchport-{name}"},
        "spec": {
            "supportedModelFormats": [{"name": "torchport", "version": "1", "autoSelect": True}],
            "protocolVersions": ["v2", "grpc-v2", "v1"],
            "containers": [container],
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


# -- Ray Serve and KubeRay ---------------------------------------------------------------

RAY_VERSION = "2.60.0"
SERVE_PORT = 8000
RAY_IMPORT_PATH = "torchport.transports.ray_serve:build_app"


def serve_config(
    name: str,
    package: str,
    *,
    replicas: int | None = None,
    max_replicas: int | None = None,
    torch_threads: int = 1,
    route_prefix: str | None = None,
    http_port: int = 8000,
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
) -> dict[str, Any]:
    """A KubeRay `RayService`: a Ray cluster running this image, and the package as a
    Ray Serve application on it (`torchport ray deploy`'s Serve config)."""
    # Serve scales replicas between the bounds; KubeRay adds worker pods to hold them.
    config = serve_config(name, f"{MODELS_DIR}/{package_name}", replicas=replicas,
                          max_replicas=max_replicas, http_port=SERVE_PORT)  # fmt: skip

    def pod(container: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
        resources = {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu_limit, "memory": memory},
        }
        return {
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "fsGroup": UID},
                "containers": [
                    {
                        "name": container,
                        "image": image,
                        "ports": [{"name": n, "containerPort": p} for n, p in ports],
                        "resources": resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            }
        }

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # The head runs no replicas; its dashboard stays inside the pod.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1"},
                    "template": pod(
                        "ray-head", [("gcs", 6379), ("client", 10001), ("serve", SERVE_PORT)]
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "replicas",
                        "replicas": replicas,
                        "minReplicas": replicas,
                        "maxReplicas": max_replicas,
                        "rayStartParams": {},
                        "template": pod("ray-worker", []),
                    }
                ],
            },
        },
    }


# -- SageMaker ---------------------------------------------------------------------------


def sagemaker_model(name: str, image: str, env: dict[str, str]) -> dict[str, Any]:
    """A `CreateModel` request (`aws sagemaker create-model --cli-input-json file://…`)."""
    keep = {k: v for k, v in env.items() if k != "TORCHPORT_HTTP_PORT"}  # SageMaker sets it
    return {
        "ModelName": name,
        "PrimaryContainer": {
            "Image": f"<account>.dkr.ecr.<region>.amazonaws.com/{image}",
            "Environment": keep,
        },
        "ExecutionRoleArn": "arn:aws:iam::<account>:role/<sagemaker-execution-role>",
    }


def sagemaker_endpoint_config(name: str, replicas: int) -> dict[str, Any]:
    return {
        "EndpointConfigName": f"{name}-config",
        "ProductionVariants": [
            {
                "VariantName": "primary",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": replicas,
            }
        ],
    }


# -- helpers -----------------------------------------------------------------------------


def _dns_name(model: str) -> str:
    """A model name as a Kubernetes object name (DNS-1123 label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:53]
    if not name:
        raise InvalidInput(f"model name {model!r} has nothing usable as a Kubernetes name")
    return name


def _memory_for(package_bytes: int) -> str:
    # torch and the server take about 600 MiB; a model takes a few times its package size.
    mib = 768 + 4 * package_bytes // (1024 * 1024)
    return f"{-(-mib // 256) * 256}Mi"


def _double(cpu: str) -> str:
    if cpu.endswith("m"):
        return f"{2 * int(float(cpu[:-1]))}m"
    return f"{2 * float(cpu):g}"


def _yaml(doc: dict[str, Any]) -> str:
    header = "# Written by `torchport build`.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _readme(name: str, image: str, package_name: str) -> str:
    return f"""# {name}: from package to a container platform

Written by `torchport build` (torchport {__version__}) for `{package_name}`.

```sh
docker build -t {image} .                    # verifies the package while building
docker run --rm -p 8080:8080 -p 8081:8081 --read-only --tmpfs /tmp {image}
kubectl apply -f k8s/                        # Deployment, Service, HPA, PodDisruptionBudget
kubectl apply -f kserve/                     # or: KServe (ServingRuntime + InferenceService)
```

The container serves OIP v2 (REST and gRPC), KServe v1, the TorchServe routes and the
SageMaker contract (`GET /ping`, `POST /invocations`) on port 8080, gRPC on 8081.
Promotion is a new image tag rolled out (`kubectl set image deployment/{name} {name}=NEW`);
rollback is `kubectl rollout undo deployment/{name}`.

SageMaker: push the image to ECR, fill in the account, region and role in `sagemaker/`, then
`aws sagemaker create-model --cli-input-json file://sagemaker/model.json` and
`aws sagemaker create-endpoint-config --cli-input-json file://sagemaker/endpoint-config.json`.
"""
