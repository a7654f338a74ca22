"""`torchport build`: verify a package and write every platform's files for it."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchport.archive import ModelKind, read_package
from torchport.deploy.container import SHM_SIZE_MIB, dockerfile, environment
from torchport.deploy.gpus import GpuRequest
from torchport.deploy.kserve import inference_service, serving_runtime
from torchport.deploy.kubernetes import autoscaler, deployment, disruption_budget, dns_name, service
from torchport.deploy.ray import ray_service
from torchport.deploy.sagemaker import sagemaker_endpoint_config, sagemaker_model
from torchport.errors import InvalidInput
from torchport.version import __version__

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
    gpus: GpuRequest | None = None
    """GPUs per pod: the image installs torch's CUDA build and serves on the GPU
    (`TORCHPORT_DEVICE=auto`); pods ask for `nvidia.com/gpu`."""


@dataclass(frozen=True)
class BuildResult:
    out: Path
    files: list[Path]
    image: str


def build(package: Path, out: Path, options: BuildOptions | None = None) -> BuildResult:
    """Verify the package and write the deployment files for it under `out`."""
    opts = options or BuildOptions()
    manifest = read_package(package).manifest  # verified: hashes, manifest
    name = dns_name(manifest.name)
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
    wanted = ["serve"] + (["onnx"] if manifest.model.kind is ModelKind.ONNX else [])
    extras = f"[{','.join(wanted + (['ray'] if opts.ray else []))}]"
    out.mkdir(parents=True, exist_ok=True)
    package_name = f"{name}.tpa"
    shutil.copyfile(package, out / package_name)
    wheel = None
    if opts.wheel is not None:
        wheel = opts.wheel.name
        shutil.copyfile(opts.wheel, out / wheel)
    env = environment(package_name)
    gpus = opts.gpus
    if gpus is not None:
        env["TORCHPORT_DEVICE"] = "auto"
    written = {
        "Dockerfile": dockerfile(
            package_name, env, extras, wheel, torch_index=gpus.torch_index if gpus else None
        ),
        ".dockerignore": "*\n!*.tpa\n!*.whl\n",
        "k8s/deployment.yaml": _yaml(
            _on_gpus(
                deployment(name, image, env, opts.replicas, opts.cpu, cpu_limit, memory),
                gpus,
                ["spec", "template", "spec"],
            )
        ),
        "k8s/service.yaml": _yaml(service(name)),
        "k8s/hpa.yaml": _yaml(autoscaler(name, opts.replicas, opts.max_replicas)),
        "k8s/pdb.yaml": _yaml(disruption_budget(name)),
        "kserve/servingruntime.yaml": _yaml(
            _on_gpus(serving_runtime(name, image, env, opts.cpu, memory), gpus, ["spec"])
        ),
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
                        opts.cpu, cpu_limit, memory, gpus=gpus)
        )  # fmt: skip
    files = []
    for relative, text in written.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files.append(path)
    return BuildResult(out, [out / package_name, *files], image)


def _on_gpus(manifest: dict[str, Any], gpus: GpuRequest | None, pod: list[str]) -> dict[str, Any]:
    """The manifest with its pod (at the path `pod`) on GPU nodes, each container asking
    for the GPUs."""
    if gpus is None:
        return manifest
    spec = manifest
    for key in pod:
        spec = spec[key]
    gpus.pod(spec)
    for container in spec["containers"]:
        gpus.container(container)
    return manifest


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
docker run --rm -p 8080:8080 -p 8081:8081 --read-only --tmpfs /tmp \\
    --shm-size={SHM_SIZE_MIB}m {image}        # /dev/shm: tensors of worker processes
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
